"""Data: class lists, and (later) datasets and the synthetic COCO-format generator."""
