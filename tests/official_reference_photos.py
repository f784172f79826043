"""Real photographs for comparing rtseg with the official code end to end, and the reference
outputs the official code gave on them (``tests/fixtures/official/photos/``).

The photographs are scikit-image's sample images (``skimage.data``; public domain / CC0 per
its documentation), cropped to three aspect ratios so that the keep-ratio resize, the padding
to 32 and the portrait case are all exercised. They are made here, not stored: the tests and
``tools/make_official_fixtures.py`` write the same pixels to a PNG file (lossless) and each side
reads that file with its own loader.

The reference outputs were produced OUTSIDE the test run by ``tools/make_official_fixtures.py``
(mmdetection 3.3.0 for SOLOv2, centermask2 on detectron2 for CenterMask), each official code
base preprocessing the photo file itself; see ``tests/fixtures/official/PHOTOS.md``.
"""

from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import torch

PHOTO_DIR = Path(__file__).parent / "fixtures" / "official" / "photos"

#: name -> (skimage.data function, crop rows, crop cols): portrait, landscape, square
PHOTOS = {
    "astronaut_portrait": ("astronaut", slice(0, 480), slice(96, 384)),  # 480 x 288
    "chelsea_landscape": ("chelsea", slice(0, 300), slice(0, 451)),  # 300 x 451 (the whole image)
    "coffee_square": ("coffee", slice(0, 400), slice(100, 500)),  # 400 x 400
    "astronaut_landscape": ("astronaut", slice(100, 400), slice(0, 512)),  # 300 x 512
}


def photo(name: str) -> np.ndarray:
    """``uint8[H, W, 3]`` BGR: the crop of a scikit-image sample photograph named in :data:`PHOTOS`."""
    from skimage import data

    func, rows, cols = PHOTOS[name]
    rgb = getattr(data, func)()
    return np.ascontiguousarray(rgb[rows, cols, ::-1])


def write_photo(name: str, folder: Path) -> Path:
    """:func:`photo` written as ``<folder>/<name>.png`` (lossless: any reader gets the same pixels)."""
    import cv2

    path = Path(folder) / f"{name}.png"
    if not cv2.imwrite(str(path), photo(name)):
        raise OSError(f"could not write {path}")
    return path


def load_reference(variant: str, name: str) -> dict[str, np.ndarray]:
    """``photos/<variant>/<name>.npz`` with ``masks`` (bool ``[N, H, W]``) unpacked from ``masks_packed``."""
    with np.load(PHOTO_DIR / variant / f"{name}.npz", allow_pickle=False) as npz:
        out = {k: npz[k] for k in npz.files}
    n, h, w = (int(v) for v in out["masks_shape"])
    out["masks"] = np.unpackbits(out["masks_packed"], count=n * h * w).reshape(n, h, w).astype(bool)
    return out


def mmdet_state_dict(variant: str, layout: str = "mmdetection") -> dict[str, torch.Tensor]:
    """The deterministic weights of ``variant`` in mmdetection's key layout.

    The values are ``official_reference_solov2.deterministic_state_dict`` of the WXinlong layout
    (rtseg's), whose keys rtseg's converter maps each mmdetection key
    (``solov2_keys/mmdetection/<variant>.json``) to; so rtseg loading this file gets exactly
    those values, and the official model gets them under its own names. ``layout="adelaidet"``:
    the same for AdelaiDet's keys (``solov2_keys/adelaidet/<variant>.json``).
    """
    from official_reference_solov2 import FIXTURE_DIR, deterministic_state_dict
    from rtseg.models import get_config
    from rtseg.families.solov2.checkpoints import convert_state_dict

    mm_keys = json.loads((FIXTURE_DIR / "solov2_keys" / layout / f"{variant}.json").read_text())["keys"]
    names = list(mm_keys)
    probe = {k: torch.full([int(s) for s in shape], float(i)) for i, (k, shape) in enumerate(mm_keys.items())}
    converted = convert_state_dict(probe, get_config(variant))  # rtseg key -> the probe of its mmdetection key
    ours = deterministic_state_dict({k: list(v.shape) for k, v in converted.items()})
    state = {names[int(t.reshape(-1)[0])]: ours[k].reshape(t.shape).clone() for k, t in converted.items()}
    if set(state) != set(mm_keys):
        raise ValueError(f"{variant}: keys the converter does not map: {sorted(set(mm_keys) - set(state))[:5]}")
    return {k: state[k] for k in names}


def centermask_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The deterministic weights of ``variant`` in centermask2's layout (``centermask_keys``)."""
    from official_reference_centermask import deterministic_state_dict, load_official_keys

    return deterministic_state_dict(load_official_keys(variant)["keys"])
