"""Deterministic weights for comparing rtseg's SOLOv2 with the official WXinlong/SOLO code.

The fixtures in ``tests/fixtures/official/solov2_outputs/`` were produced OUTSIDE this
repository by running the official modules with the weights from
:func:`deterministic_state_dict` (fed the key -> shape tables in ``solov2_keys/<variant>.json``)
on ``official_reference.reference_image()``; see ``tests/fixtures/official/SOLOV2.md``.

Every tensor is a pure function of its key name and element index (``uniform_from_key`` of
``official_reference``: splitmix64, integer arithmetic), so no random generator is involved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from official_reference import by_key_part, uniform_from_key

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "official"

BN_RANGES = {"weight": (0.5, 1.0), "bias": (-0.1, 0.1), "running_mean": (-0.1, 0.1), "running_var": (0.5, 1.5)}
#: last BatchNorm of a bottleneck branch: small, so the residual stream does not grow with depth
BN3_WEIGHT_RANGE = (0.1, 0.3)
GN_RANGES = {"weight": (0.5, 1.5), "bias": (-0.1, 0.1)}
BIAS_RANGE = (-0.1, 0.1)
#: category logits' bias: most sigmoid scores below the 0.1 threshold, some hundreds above it
#: (tuned on the official light-448 R-18: 1309 of 3872 x 80 cell-class pairs pass)
CATE_BIAS_RANGE = (-5.5, -4.5)
#: multipliers of the He-uniform bound sqrt(6 / fan_in) by a dotted component of the key
WEIGHT_GAIN_BY_KEY_PART = {
    "conv_offset": 0.3,  # deformable offsets of a fraction of a pixel, masks near sigmoid(0)
    "solo_kernel": 2.0,  # mask logits of ~10 units: crisp masks of varied sizes
    "lateral_convs": 0.6,  # FPN laterals: outputs at an RMS of about 1
}


def _gain(key: str) -> float:
    return by_key_part(key, WEIGHT_GAIN_BY_KEY_PART, 1.0)


def deterministic_state_dict(key_shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Fill every entry of a WXinlong-layout SOLOv2 state_dict from its key name.

    Rules: ``num_batches_tracked`` 0; BatchNorm (modules with ``running_mean``) as in
    :data:`BN_RANGES` (``bn3`` weight :data:`BN3_WEIGHT_RANGE`); GroupNorm (module ``gn``)
    :data:`GN_RANGES`; weights with 2+ dims He-uniform ``U(-b, b)``, ``b = gain * sqrt(6 /
    fan_in)``; ``solo_cate.bias`` :data:`CATE_BIAS_RANGE`; other biases :data:`BIAS_RANGE`.
    Raises ``ValueError`` for a key no rule covers.
    """
    bn_prefixes = {k[: -len("running_mean")] for k in key_shapes if k.endswith(".running_mean")}
    state: dict[str, torch.Tensor] = {}
    for key, shape in key_shapes.items():
        shape = [int(s) for s in shape]
        prefix, _, leaf = key.rpartition(".")
        module = prefix.rpartition(".")[2]
        if leaf == "num_batches_tracked":
            state[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        if prefix + "." in bn_prefixes:
            low, high = BN3_WEIGHT_RANGE if (module == "bn3" and leaf == "weight") else BN_RANGES[leaf]
        elif module == "gn" and leaf in GN_RANGES:
            low, high = GN_RANGES[leaf]
        elif leaf == "weight" and len(shape) >= 2:
            bound = _gain(key) * float(np.sqrt(6.0 / int(np.prod(shape[1:]))))
            low, high = -bound, bound
        elif leaf == "bias" and len(shape) == 1:
            low, high = CATE_BIAS_RANGE if module == "solo_cate" else BIAS_RANGE
        else:
            raise ValueError(f"no fill rule for {key!r} with shape {shape}")
        state[key] = torch.from_numpy(uniform_from_key(key, shape, low, high))
    return state


def load_keys(variant: str) -> dict:
    """``solov2_keys/<variant>.json`` (the official WXinlong layout) as a dict."""
    return json.loads((FIXTURE_DIR / "solov2_keys" / f"{variant}.json").read_text())


def load_outputs(variant: str) -> dict[str, np.ndarray]:
    """``solov2_outputs/<variant>.npz``; adds ``masks_top`` (bool ``[K, H, W]``), the first
    ``K`` final masks decoded from their COCO RLEs (``masks_rle_top``)."""
    from pycocotools import mask as mask_utils

    with np.load(FIXTURE_DIR / "solov2_outputs" / f"{variant}.npz", allow_pickle=False) as npz:
        out = {name: npz[name] for name in npz.files}
    _, h, w = (int(s) for s in out["masks_shape"])
    rles = [{"size": [h, w], "counts": str(c).encode("ascii")} for c in out["masks_rle_top"]]
    out["masks_top"] = (mask_utils.decode(rles).transpose(2, 0, 1).astype(bool) if rles
                        else np.zeros((0, h, w), bool))
    return out
