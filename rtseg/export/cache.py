"""Automatic exports, cached by what they depend on.

``rtseg run --backend onnxruntime`` without ``--engine`` exports the model once and reuses
the file while the model, the weights (by SHA-256), the opset and the rtseg / torch versions
stay the same: the key is in the file name, so a change simply makes a new file.

Deformable convolutions stay ONNX ``DeformConv`` here (``dcn="deformconv"``): ONNX Runtime
runs a DCN layer 1.07-1.35x faster than the standard-operator form TensorRT needs
(``benchmarks/deform_conv.py``, BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import torch
from torch import nn

from rtseg.export.onnx_export import DEFAULT_OPSET, export_onnx, sha256_file

log = logging.getLogger("rtseg.export")


def default_cache_dir() -> str:
    """``$RTSEG_CACHE``, else ``engines/`` in the working directory."""
    return os.environ.get("RTSEG_CACHE") or "engines"


#: how the automatic (ONNX Runtime) exports write deformable convolution
ORT_DCN = "deformconv"


def onnx_cache_key(cfg: Any, weights: str | None, opset: int = DEFAULT_OPSET, batch: int | str = 1,
                   dynamic_hw: bool = False) -> str:
    from rtseg import __version__

    parts = [cfg.name, sha256_file(weights) if weights else "random-init-seed-0", f"opset{opset}", f"b{batch}",
             "dynamic-hw" if dynamic_hw else "x".join(map(str, cfg.input_size)), __version__, torch.__version__,
             f"dcn-{ORT_DCN}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _has_stage2_entry(manifest_path: str) -> bool:
    """Whether the manifest exists and was written with the second stage's entry (older caches:
    re-exported, so that families with a stage 2 get its graph beside)."""
    try:
        with open(manifest_path, encoding="utf-8") as f:
            return "stage2" in json.load(f)
    except (OSError, ValueError):
        return False


def cached_onnx(net: nn.Module, cfg: Any, weights: str | None, cache_dir: str | None = None, *,
                dynamic_hw: bool = False, dynamic_batch: bool = True) -> str:
    """Path of the ONNX export of ``net`` (symbolic height / width with ``dynamic_hw``),
    exporting it first if the cache lacks it.

    The batch dimension is symbolic by default (``dynamic_batch``): the same file then runs
    one frame and ``rtseg run --batch N``'s batches of several streams' frames
    (``Segmenter.process_batch``); ``dynamic_batch=False`` gives the fixed batch-1 graph."""
    folder = cache_dir or default_cache_dir()
    key = onnx_cache_key(cfg, weights, batch="dyn" if dynamic_batch else 1, dynamic_hw=dynamic_hw)
    path = os.path.join(folder, f"{cfg.name}-{key}.onnx")
    if not (os.path.isfile(path) and _has_stage2_entry(os.path.splitext(path)[0] + ".json")):
        log.info("exporting %s to %s (once; reused while model and weights stay the same)", cfg.name, path)
        export_onnx(net, cfg, path, weights=weights, dcn=ORT_DCN, dynamic_hw=dynamic_hw, dynamic_batch=dynamic_batch)
    return path
