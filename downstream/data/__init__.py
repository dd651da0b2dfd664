"""The dataset readers of the evaluation tasks: classification.py (embedded
corpus, ImageFolder, CLIP_benchmark webdataset; the linear probe's split pair),
captioned.py (image-text retrieval), coco.py (COCO instances and proposals for
detection), segmentation.py (label-map masks), scenes.py (composed scenes built
from the embedded corpus, for detection and segmentation)."""
