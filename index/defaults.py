"""The index stage's defaults, each defined once: the functions' keyword
defaults and ``react embed`` / ``react index``'s options both read them.
Kept free of imports so that building the parsers loads neither torch nor faiss."""
from __future__ import annotations

# react embed (index.embed)
PART_SIZE = 100_000            # rows per part
EMBED_BATCH_CPU = 256          # images per batch on the CPU
EMBED_BATCH_GPU = 1024         # large batches keep a GPU busy
EMBED_GPU_WORKERS = 8          # decoding workers on CUDA: min(this, cpus); 0 on the CPU

MODALITIES = ("image", "text")  # the two sides of an embedding folder, one index each

# react index build / tune / eval (index.build, index.evaluate, index.tune)
MODALITY = "both"              # image (T2I), text (T2T) or both
FACTORY = "auto"               # choose by measurement
TARGET_RECALL = 0.95           # recall@k against exact search
K = 50                         # the k of recall@k; REACT retrieves top-k per query
N_QUERIES = 1000               # queries sampled for tuning and evaluation
SEED = 0                       # query sampling
SAMPLE_SIZE = 200_000          # rows the candidates are compared on before the full build
