"""Training: the training loop (:mod:`rtseg.train.trainer`) and the initialisation the families
share (:mod:`rtseg.train.init`); each family's loss is its own (``rtseg/families/<name>/loss.py``).
Importing this package imports nothing eagerly."""
