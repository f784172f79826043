"""Training: the YOLACT loss (:mod:`rtseg.train.yolact_loss`) and the training loop
(:mod:`rtseg.train.trainer`). Importing this package imports neither eagerly."""
