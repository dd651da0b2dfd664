"""The demo: the whole REACT pipeline on the embedded default, end to end (``make demo``).

It is the one package that may import every stage: it builds the embedded
corpus and base, embeds and indexes the retrieval pool, serves it on loopback,
retrieves the task's subset, downloads it from a loopback image server,
customizes the base (gated-image and a random-subset control, three seeds
each) and transfers base and customized models to the downstream tasks.
Reads nothing but what it builds; writes ``OUT/summary.json`` and the report.
"""
