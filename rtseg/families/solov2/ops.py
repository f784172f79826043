"""SOLOv2's parameters of rtseg's generic CUDA kernels (``cuda/preprocess.cu`` through
:func:`rtseg.kernels.masks.preprocess_cuda`); plain Python, no GPU."""

from __future__ import annotations

from rtseg.families.solov2.network import CAFFE_MEAN_BGR, CAFFE_STD_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, Solov2Config
from rtseg.families.solov2.preprocess import resized_shape
from rtseg.kernels.masks import PreprocessParams


def preprocess_params(cfg: Solov2Config, image_size: tuple[int, int]) -> PreprocessParams:
    """What the preprocessing kernel needs to compute :func:`rtseg.families.solov2.preprocess.preprocess_float`
    into the fixed canvas ``cfg.input_size`` for frames of ``image_size (H, W)``: ``rgb_imagenet``
    reads BGR as RGB with ImageNet mean / std, ``bgr_caffe`` keeps BGR with detectron2's."""
    if cfg.pixel_norm == "rgb_imagenet":
        src, mean, std = (2, 1, 0), IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    else:
        src, mean, std = (0, 1, 2), CAFFE_MEAN_BGR, CAFFE_STD_BGR
    return PreprocessParams(resized_shape(image_size, cfg), tuple(cfg.input_size), src,  # type: ignore[arg-type]
                            tuple(float(v) for v in mean), tuple(float(v) for v in std), False)  # type: ignore[arg-type]
