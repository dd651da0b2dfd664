"""One module per ``react eval`` task, each with its metric: zeroshot,
linear_probe, retrieval, detection, segmentation. dense.py gives the MaskCLIP
dense patch features that detection (roi) and segmentation share; metrics.py
the classification metrics of zeroshot and linear_probe. These import torch."""
