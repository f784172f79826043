"""Defaults that the command line shows in its help, kept apart from the modules that use them
so that building the parser (``rtseg --help``) imports neither torch nor OpenCV."""

#: what ``rtseg run`` uses when no --model is given
DEFAULT_MODEL = "yolact_resnet18_half_384"

#: display / publish score threshold: YolactEdge's README demos use 0.3 (dbolya/yolact's use 0.15)
DEFAULT_SCORE_THRESHOLD = 0.3
