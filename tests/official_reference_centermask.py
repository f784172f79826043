"""Deterministic weights and input image for comparing rtseg's CenterMask with the official code.

``tests/fixtures/official/centermask_outputs/<variant>.npz`` was produced OUTSIDE this repository
by running the official youngwanLEE/centermask2 network (detectron2) with the weights of
:func:`deterministic_state_dict` (fed the key -> shape table of
``centermask_keys/<variant>.json``) on :func:`reference_image`; see
``tests/fixtures/official/CENTERMASK.md``. The weights reuse the splitmix64 generator of
``official_reference.uniform_from_key`` (a pure function of key name and element index), with
rules for CenterMask's layer types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from official_reference import by_key_part, uniform_from_key

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "official"

#: ranges, tuned on the official network so that activations stay of order 1 through the
#: VoVNet and a few tens of locations pass FCOS's 0.05 threshold
NORM_WEIGHT_RANGE = (0.5, 1.0)  # FrozenBN and GroupNorm scale
NORM_BIAS_RANGE = (-0.1, 0.1)
RUNNING_MEAN_RANGE = (-0.1, 0.1)
RUNNING_VAR_RANGE = (0.5, 1.5)
BIAS_RANGE = (-0.1, 0.1)
SCALE_RANGE = (0.8, 1.2)  # FCOS per-level scales
#: FCOS classifier bias: the focal-loss prior -log(99) = -4.6 plus U(0, 2.5), so that some classes pass
CLS_BIAS_RANGE = (-4.6, -2.1)
#: maskiou bias: IoU predictions around 0.5-0.9 so the rescored scores are not all clamped
MASKIOU_BIAS_RANGE = (0.5, 0.9)
#: box-distance bias (in strides): boxes of a few strides, none degenerate
BBOX_BIAS_RANGE = (0.5, 3.0)
#: He-uniform gain by a dotted key component (first match); 1 otherwise
WEIGHT_GAIN_BY_KEY_PART = {
    "stem_1/conv": 0.01,  # the input is BGR minus mean with std 1 (values of order 100): back to order 1
    "bbox_pred": 0.5,  # box distances of a few strides
    "maskiou": 0.05,  # final MaskIoU layer: near its bias
    "cls_logits": 0.5,
}


def _gain(key: str) -> float:
    return by_key_part(key, WEIGHT_GAIN_BY_KEY_PART, 1.0)


def deterministic_state_dict(key_shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Fill every entry of a centermask2 state_dict deterministically from its key name.

    Rules, by key: FrozenBN (a module with ``running_mean``): weight U(0.5, 1), bias U(-0.1, 0.1),
    running_mean U(-0.1, 0.1), running_var U(0.5, 1.5); GroupNorm (1-D ``weight``/``bias`` inside an
    FCOS tower): U(0.5, 1) / U(-0.1, 0.1); weights with 2+ dims: He-uniform ``U(-b, b)``,
    ``b = gain * sqrt(6 / fan_in)`` (``fan_in = prod(shape[1:])``; for a transposed conv
    ``[in, out, k, k]`` the same formula; gains in ``WEIGHT_GAIN_BY_KEY_PART``);
    ``scales.*.scale``: U(0.8, 1.2); ``cls_logits.bias`` U(-4.6, -2.1); ``bbox_pred.bias``
    U(0.5, 3); ``maskiou.bias`` U(0.5, 0.9); other biases U(-0.1, 0.1).

    Raises ``ValueError`` for a key no rule covers.
    """
    bn_prefixes = {k[: -len("running_mean")] for k in key_shapes if k.endswith(".running_mean")}
    state: dict[str, torch.Tensor] = {}
    for key, shape in key_shapes.items():
        shape = [int(s) for s in shape]
        prefix, _, leaf = key.rpartition(".")
        prefix += "."
        parts = key.split(".")
        if prefix in bn_prefixes:
            ranges = {"weight": NORM_WEIGHT_RANGE, "bias": NORM_BIAS_RANGE, "running_mean": RUNNING_MEAN_RANGE,
                      "running_var": RUNNING_VAR_RANGE}
            if leaf not in ranges:
                raise ValueError(f"unexpected norm entry {key!r}")
            values = uniform_from_key(key, shape, *ranges[leaf])
        elif leaf == "scale":
            values = uniform_from_key(key, shape, *SCALE_RANGE)
        elif len(shape) == 1 and any(p.endswith("_tower") for p in parts) and leaf in ("weight", "bias"):
            values = uniform_from_key(key, shape, *(NORM_WEIGHT_RANGE if leaf == "weight" else NORM_BIAS_RANGE))
        elif leaf == "weight" and len(shape) >= 2:
            bound = _gain(key) * float(np.sqrt(6.0 / int(np.prod(shape[1:]))))
            values = uniform_from_key(key, shape, -bound, bound)
        elif leaf == "bias" and len(shape) == 1:
            rng = {"cls_logits": CLS_BIAS_RANGE, "maskiou": MASKIOU_BIAS_RANGE, "bbox_pred": BBOX_BIAS_RANGE}
            rng = next((v for part, v in rng.items() if part in parts), BIAS_RANGE)
            values = uniform_from_key(key, shape, *rng)
        else:
            raise ValueError(f"no fill rule for {key!r} with shape {shape}")
        state[key] = torch.from_numpy(values)
    return state


def reference_image() -> np.ndarray:
    """A 600 x 1000 BGR uint8 collage of scikit-image photographs (no resizing, no repeats):
    astronaut (512 x 512) top-left, coffee's first 88 rows below it, coffee (400 x 488)
    top-right, the cat's last 200 rows below that and a 200 x 37 strip of the astronaut's
    bottom-right corner at the bottom-right.

    600 x 1000 is what detectron2's Lite resize (600 / 1000) keeps unchanged and what its
    ``ImageList`` pads to 608 x 1024, rtseg's Lite canvas: both codes see the same input tensor.
    """
    from skimage import data  # dev dependency, imported only when the image is needed

    rgb = np.zeros((600, 1000, 3), np.uint8)
    rgb[:512, :512] = data.astronaut()
    rgb[512:, :512] = data.coffee()[:88, :512]
    rgb[:400, 512:] = data.coffee()[:, :488]
    rgb[400:, 512:963] = data.chelsea()[100:]
    rgb[400:, 963:] = data.astronaut()[312:, 475:]
    return np.ascontiguousarray(rgb[..., ::-1])


def load_official_keys(variant: str) -> dict:
    with open(FIXTURE_DIR / "centermask_keys" / f"{variant}.json", encoding="utf-8") as f:
        return json.load(f)


def load_official_outputs(variant: str) -> dict[str, np.ndarray]:
    """``centermask_outputs/<variant>.npz``; adds ``masks`` bool [N, H, W] unpacked from ``masks_packed``."""
    with np.load(FIXTURE_DIR / "centermask_outputs" / f"{variant}.npz", allow_pickle=False) as npz:
        out = {name: npz[name] for name in npz.files}
    shape = tuple(int(s) for s in out["masks_shape"])
    out["masks"] = np.unpackbits(out["masks_packed"], count=int(np.prod(shape))).astype(bool).reshape(shape)
    return out
