"""Deterministic weights and input image for comparing rtseg's YOLACT with the official code.

The fixtures under ``tests/fixtures/official/`` were produced OUTSIDE this repository by running
the official dbolya/yolact network with the weights from :func:`deterministic_state_dict` (fed the
key -> shape tables in ``yolact_keys/<config>.json``) on :func:`reference_image`. A test builds the
same weights here, loads them into rtseg's model and compares against the stored outputs; see
``tests/fixtures/official/README.md`` for what each file holds.

Weights are a pure function of the key name and the element index (a splitmix64 hash turned into a
uniform number with integer arithmetic), so they do not depend on the torch or numpy random number
generators and are identical on every platform and version.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "official"

# Ranges chosen so that activations stay finite and unsaturated through ResNet-101 in eval mode and
# so that the class softmax gives a few tens of detections above YOLACT's 0.05 threshold
# (nms_conf_thresh in data/config.py of the official code). Tuned by running the official network.
BN_WEIGHT_RANGE = (0.5, 1.0)
# bn3, the last BatchNorm of a ResNet bottleneck branch, gets a small scale (in the spirit of the
# zero-gamma init of Goyal et al. 2017) so that the residual stream does not grow with depth and
# ResNet-50 and ResNet-101 give activations of the same size.
BN3_WEIGHT_RANGE = (0.1, 0.3)
BN_BIAS_RANGE = (-0.1, 0.1)
BN_RUNNING_MEAN_RANGE = (-0.1, 0.1)
BN_RUNNING_VAR_RANGE = (0.5, 1.5)
CONV_BIAS_RANGE = (-0.1, 0.1)
# Bias ranges chosen by a dotted component of the key (first match); any other bias: CONV_BIAS_RANGE.
BIAS_RANGE_BY_KEY_PART = {
    "conf_layer": (-2.0, 2.0),
    # YOLACT++ mask-IoU head: positive biases so that its ReLU + max-pool output is mostly > 0
    # and the mask-rescored scores are not all zero.
    "maskiou_net": (0.0, 0.2),
}
# Added to the background class (class 0 of every anchor) of conf_layer.bias, so that most priors
# are background and only some pass the 0.05 foreground threshold.
CONF_BACKGROUND_BIAS = 14.0
# Multipliers of the He-uniform bound sqrt(6 / fan_in), chosen by a dotted component of the key
# (first match in this order); any other weight gets 1.
WEIGHT_GAIN_BY_KEY_PART = {
    "conv_offset_mask": 0.5,  # deformable-conv offsets of about a pixel, masks near sigmoid(0)
    "lat_layers": 0.6,  # FPN laterals: keeps FPN outputs at an RMS of about 1
    "bbox_layer": 0.3,  # box offsets of a few tenths: boxes near their priors
    "mask_layer": 0.5,  # tanh of the coefficients mostly unsaturated
}

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def uniform_from_key(key: str, shape: Sequence[int], low: float, high: float) -> np.ndarray:
    """Deterministic pseudo-random float32 array of ``shape`` in ``[low, high)`` seeded by ``key``.

    Element ``i`` (row-major) is ``low + (high - low) * u_i`` where ``u_i`` is the top 53 bits of
    ``splitmix64((crc32(key) << 32) + i)`` divided by 2**53, computed in float64, then cast.
    """
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    seed = np.uint64(zlib.crc32(key.encode("utf-8"))) << np.uint64(32)
    with np.errstate(over="ignore"):
        bits = _splitmix64(seed + np.arange(count, dtype=np.uint64))
    unit = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return (low + (high - low) * unit).astype(np.float32).reshape(tuple(shape))


def by_key_part(key: str, table: Mapping[str, Any], default: Any) -> Any:
    """The value of the first entry of ``table`` whose name is one of ``key``'s dot-separated
    parts (e.g. a gain for every tensor under ``fpn.pred_layers``), else ``default``."""
    parts = key.split(".")
    for part, value in table.items():
        if part in parts:
            return value
    return default


def _weight_gain(key: str) -> float:
    return by_key_part(key, WEIGHT_GAIN_BY_KEY_PART, 1.0)


def _bias_range(key: str) -> tuple[float, float]:
    return by_key_part(key, BIAS_RANGE_BY_KEY_PART, CONV_BIAS_RANGE)


def _num_classes(conf_bias_key: str, conf_bias_shape: Sequence[int], key_shapes: Mapping) -> int:
    """Classes per anchor (background included) from conf_layer.bias [A*C] and bbox_layer.bias [A*4]."""
    bbox_key = conf_bias_key.replace("conf_layer", "bbox_layer")
    if bbox_key not in key_shapes:
        raise ValueError(f"{conf_bias_key!r} needs {bbox_key!r} beside it to know the class count; not found")
    anchors = int(key_shapes[bbox_key][0]) // 4
    if anchors == 0 or int(conf_bias_shape[0]) % anchors:
        raise ValueError(
            f"{conf_bias_key!r} has {conf_bias_shape[0]} channels, not a multiple of {anchors} anchors"
        )
    return int(conf_bias_shape[0]) // anchors


def deterministic_state_dict(key_shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Fill every entry of a YOLACT state_dict deterministically from its key name.

    Args:
        key_shapes: ``{key: shape}`` as in ``yolact_keys/<config>.json["keys"]`` (state_dict order).

    Returns:
        ``{key: tensor}`` in the same order; float32 tensors except ``num_batches_tracked``
        (int64 scalar 0). Rules, by key:

        - ``*.num_batches_tracked`` -> 0;
        - BatchNorm (a key whose module also has ``running_mean``): weight U(0.5, 1)
          (U(0.1, 0.3) for ``bn3``), bias U(-0.1, 0.1), running_mean U(-0.1, 0.1),
          running_var U(0.5, 1.5);
        - weights with 2+ dims (conv, deformable conv, linear): U(-b, b) with
          ``b = gain * sqrt(6 / fan_in)``, ``fan_in = prod(shape[1:])`` (He-uniform, variance
          2/fan_in at gain 1); gain from ``WEIGHT_GAIN_BY_KEY_PART``, else 1;
        - ``*conf_layer.bias``: U(-2, 2), plus 14 on the background class (channel
          ``anchor * num_classes``), so that some, not all, priors pass the 0.05 threshold;
        - ``maskiou_net`` biases: U(0, 0.2); any other bias: U(-0.1, 0.1).

    Raises:
        ValueError: a key that none of the rules above covers (e.g. a 1-D ``weight`` outside a
            BatchNorm), so a new layer type cannot be filled silently.
    """
    bn_prefixes = {k[: -len("running_mean")] for k in key_shapes if k.endswith(".running_mean")}
    state: dict[str, torch.Tensor] = {}
    for key, shape in key_shapes.items():
        shape = [int(s) for s in shape]
        prefix, _, leaf = key.rpartition(".")
        prefix += "."
        if leaf == "num_batches_tracked":
            state[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        if prefix in bn_prefixes:
            ranges = {
                "weight": BN3_WEIGHT_RANGE if "bn3" in key.split(".") else BN_WEIGHT_RANGE,
                "bias": BN_BIAS_RANGE,
                "running_mean": BN_RUNNING_MEAN_RANGE,
                "running_var": BN_RUNNING_VAR_RANGE,
            }
            if leaf not in ranges:
                raise ValueError(f"unexpected BatchNorm entry {key!r}; expected weight/bias/running_*")
            values = uniform_from_key(key, shape, *ranges[leaf])
        elif leaf == "weight" and len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            bound = _weight_gain(key) * float(np.sqrt(6.0 / fan_in))
            values = uniform_from_key(key, shape, -bound, bound)
        elif leaf == "bias" and len(shape) == 1:
            values = uniform_from_key(key, shape, *_bias_range(key))
            if "conf_layer" in key.split("."):
                values[:: _num_classes(key, shape, key_shapes)] += CONF_BACKGROUND_BIAS
        else:
            raise ValueError(f"no fill rule for {key!r} with shape {shape}; expected BN, weight or bias")
        state[key] = torch.from_numpy(values)
    return state


def reference_image() -> np.ndarray:
    """The reference input: scikit-image's astronaut, top 400 rows, as BGR.

    Returns:
        uint8 array [400, 512, 3], BGR channel order (as ``cv2.imread`` gives). Not square, so a
        width/height mix-up in resize or mask pasting shows in the comparison.
    """
    from skimage import data  # dev dependency, imported only when the image is needed

    rgb = data.astronaut()  # uint8 [512, 512, 3] RGB
    return np.ascontiguousarray(rgb[:400, :, ::-1])


def load_official_keys(config_name: str) -> dict:
    """Read ``yolact_keys/<config_name>.json`` (e.g. ``"yolact_plus_resnet50"``) as a dict."""
    path = FIXTURE_DIR / "yolact_keys" / f"{config_name}.json"
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_official_outputs(config_name: str) -> dict[str, np.ndarray]:
    """Read ``yolact_outputs/<config_name>.npz``; adds ``masks`` as bool [N, H, W] unpacked.

    The stored ``masks_packed`` is ``np.packbits`` of the flattened bool masks; ``masks_shape``
    gives [N, H, W].
    """
    path = FIXTURE_DIR / "yolact_outputs" / f"{config_name}.npz"
    with np.load(path, allow_pickle=False) as npz:
        out = {name: npz[name] for name in npz.files}
    shape = tuple(int(s) for s in out["masks_shape"])
    count = int(np.prod(shape))
    out["masks"] = np.unpackbits(out["masks_packed"], count=count).astype(bool).reshape(shape)
    return out
