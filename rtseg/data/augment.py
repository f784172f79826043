"""YOLACT's training augmentation, as pure NumPy / OpenCV functions with an explicit RNG.

What dbolya/yolact ``utils/augmentations.py`` ``SSDAugmentation`` does for
``yolact_base_config`` (``augment_photometric_distort``, ``augment_expand``,
``augment_random_sample_crop`` and ``augment_random_mirror`` on; ``augment_random_flip``
and ``augment_random_rot90`` off; ``preserve_aspect_ratio`` off), in the same order:

1. photometric distortion (:func:`photometric_distort`);
2. expand: with probability 1/2, place the image on a mean-filled canvas 1-4x its size;
3. random sample crop (:func:`sample_crop_rect`);
4. random mirror (probability 1/2);
5. square resize to ``size`` and dropping of tiny boxes.

Facts carried over, and where rtseg differs on purpose:

- Photometric: brightness ``+U(-32, 32)`` (p 1/2); then either
  ``contrast -> HSV -> saturation -> hue -> BGR`` or ``HSV -> saturation -> hue -> BGR ->
  contrast`` (1/2 each); contrast ``x U(0.5, 1.5)``, saturation ``x U(0.5, 1.5)``, hue
  ``+U(-18, 18)`` degrees (each p 1/2). OpenCV's float HSV (H in degrees) as upstream.
  Upstream never clips; rtseg clips to ``[0, 255]`` once, at the end of the distortion,
  because the interface hands on ``uint8`` images.
- Sample crop: upstream's modes are "no crop" and min-IoU 0.1 / 0.3 / 0.7 / 0.9 / none,
  drawn uniformly. Its IoU test (``overlap.min() < min_iou and max_iou < overlap.max()``
  with ``max_iou = inf``) is never true, so every mode except "no crop" is the same
  unconstrained crop; the upstream comment says fixing it halved mAP, so it stays, and
  rtseg implements that effective behaviour: no crop with probability 1/6, else up to 50
  tries of a crop ``U(0.3, 1)`` of each side with aspect ``h/w`` in ``[0.5, 2]``, kept
  when at least one non-crowd box has its centre strictly inside; instances whose box
  centre is outside are dropped, boxes are clipped to the crop (not recomputed from the
  masks). When all 50 tries fail a new mode is drawn, as upstream.
  Upstream draws the crop's left edge with ``numpy.random.uniform(width - w)``, which is
  ``uniform(low=width - w, high=1)``: a quirk; rtseg uses the intended ``U(0, width - w)``.
- Tiny boxes: upstream compares absolute pixel sizes with ``discard_box_width = 4/550``,
  which only drops degenerate boxes; rtseg applies the evident intent, a box must be
  wider and taller than ``4/550`` of the input side (:data:`DISCARD_BOX_SIZE`).
- Expand and crop are composed without building the up-to-16x canvas, and the mirror is
  applied after the resize (cheaper); both give the same geometry as upstream's order.

Coordinates: boxes are ``float32[N, 4]`` ``x1, y1, x2, y2`` in pixels with the
pixel-edge convention (a mask covering columns ``a..b`` has ``x1 = a``, ``x2 = b + 1``).
"""

from __future__ import annotations

import cv2
import numpy as np

#: minimum box width and height, relative to the input side (dbolya/yolact data/config.py
#: ``discard_box_width`` / ``discard_box_height``)
DISCARD_BOX_SIZE = 4 / 550
#: canvas fill of the expand step: YOLACT's BGR means (data/config.py ``MEANS``)
EXPAND_FILL_BGR = (103.94, 116.78, 123.68)
#: largest expand ratio (``Expand``: ``ratio = uniform(1, 4)``)
MAX_EXPAND_RATIO = 4.0
#: ``RandomSampleCrop.sample_options``: None = keep the whole image
CROP_MODES = (None, (0.1, None), (0.3, None), (0.7, None), (0.9, None), (None, None))
_CROP_TRIES = 50
_CV_MAX_CHANNELS = 512  # cv2.resize handles at most this many channels at once


# --------------------------------------------------------------------------------------
# photometric
# --------------------------------------------------------------------------------------
def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``uint8[H, W, 3]`` BGR -> distorted ``uint8[H, W, 3]`` BGR (a new array).

    Upstream's ``PhotometricDistort`` (see the module docstring); works in float32 and
    clips to ``[0, 255]`` only at the end.
    """
    img = image.astype(np.float32)
    if rng.integers(2):  # RandomBrightness
        img += np.float32(rng.uniform(-32.0, 32.0))
    contrast_first = bool(rng.integers(2))
    if contrast_first:
        img = _random_contrast(img, rng)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)  # float: H in [0, 360), S in [0, 1], V as input
    if rng.integers(2):  # RandomSaturation
        hsv[:, :, 1] *= np.float32(rng.uniform(0.5, 1.5))
    if rng.integers(2):  # RandomHue, wrapped once into [0, 360]
        hue = hsv[:, :, 0]
        hue += np.float32(rng.uniform(-18.0, 18.0))
        hue[hue > 360.0] -= 360.0
        hue[hue < 0.0] += 360.0
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first:
        img = _random_contrast(img, rng)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _random_contrast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.integers(2):
        img = img * np.float32(rng.uniform(0.5, 1.5))
    return img


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------
def expand_placement(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Upstream ``Expand``: ``(canvas_h, canvas_w, top, left)`` of a mean-filled canvas the
    image is pasted into at ``(top, left)``; ``(height, width, 0, 0)`` (no expand) with
    probability 1/2, else a ratio ``U(1, 4)`` for both sides."""
    if rng.integers(2):
        return height, width, 0, 0
    ratio = rng.uniform(1.0, MAX_EXPAND_RATIO)
    left = rng.uniform(0.0, width * ratio - width)
    top = rng.uniform(0.0, height * ratio - height)
    canvas_h, canvas_w = int(height * ratio), int(width * ratio)
    top_i, left_i = min(int(top), canvas_h - height), min(int(left), canvas_w - width)
    return canvas_h, canvas_w, top_i, left_i


def sample_crop_rect(boxes: np.ndarray, crowd: np.ndarray, height: int, width: int,
                     rng: np.random.Generator) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Upstream ``RandomSampleCrop`` on an ``height x width`` image.

    Args:
        boxes: ``float32[N, 4]`` xyxy pixels in that image.
        crowd: ``bool[N]``.

    Returns ``None`` for "no crop", else ``((x1, y1, x2, y2), keep)``: an integer crop
    rectangle and ``bool[N]``, the instances whose box centre lies strictly inside it
    (at least one of them not a crowd). With no non-crowd instance upstream can only
    leave through the "no crop" mode, so that is returned directly.
    """
    if not np.any(~crowd):
        return None
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    while True:
        if CROP_MODES[int(rng.integers(len(CROP_MODES)))] is None:
            return None
        for _ in range(_CROP_TRIES):
            w = rng.uniform(0.3 * width, width)
            h = rng.uniform(0.3 * height, height)
            if h / w < 0.5 or h / w > 2.0:
                continue
            left = rng.uniform(0.0, width - w)
            top = rng.uniform(0.0, height - h)
            rect = (int(left), int(top), int(left + w), int(top + h))
            keep = ((centres[:, 0] > rect[0]) & (centres[:, 1] > rect[1])
                    & (centres[:, 0] < rect[2]) & (centres[:, 1] < rect[3]))
            if np.any(keep & ~crowd):
                return rect, keep


def _overlap(rect: tuple[int, int, int, int], top: int, left: int, h: int, w: int):
    """Slices (into the window, into the source) where a source of ``h x w`` pasted at
    ``(top, left)`` on a canvas meets the window ``rect = (x1, y1, x2, y2)``; None if apart."""
    x1, y1, x2, y2 = rect
    ox1, oy1, ox2, oy2 = max(x1, left), max(y1, top), min(x2, left + w), min(y2, top + h)
    if ox1 >= ox2 or oy1 >= oy2:
        return None
    dst = (slice(oy1 - y1, oy2 - y1), slice(ox1 - x1, ox2 - x1))
    src = (slice(oy1 - top, oy2 - top), slice(ox1 - left, ox2 - left))
    return dst, src


def _image_window(image: np.ndarray, top: int, left: int, rect: tuple[int, int, int, int],
                  fill: tuple[int, int, int]) -> np.ndarray:
    """The window ``rect`` of a ``fill``-coloured canvas holding ``image uint8[h, w, 3]`` at
    ``(top, left)``: expand + crop without building the whole canvas."""
    x1, y1, x2, y2 = rect
    out = np.empty((y2 - y1, x2 - x1, image.shape[2]), image.dtype)
    out[:] = np.asarray(fill, image.dtype)
    parts = _overlap(rect, top, left, image.shape[0], image.shape[1])
    if parts is not None:
        out[parts[0]] = image[parts[1]]
    return out


def _mask_window(masks: np.ndarray, top: int, left: int, rect: tuple[int, int, int, int]) -> np.ndarray:
    """As :func:`_image_window` for ``masks uint8[N, h, w]`` on a zero canvas."""
    x1, y1, x2, y2 = rect
    out = np.zeros((masks.shape[0], y2 - y1, x2 - x1), masks.dtype)
    parts = _overlap(rect, top, left, masks.shape[1], masks.shape[2])
    if parts is not None:
        out[(slice(None), *parts[0])] = masks[(slice(None), *parts[1])]
    return out


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8[N, h, w]`` 0/1 -> ``uint8[N, H, W]`` 0/1 for ``size = (H, W)``, bilinear on the
    0/1 values as upstream (``cv2.resize`` of a uint8 0/1 image rounds at 0.5)."""
    n = masks.shape[0]
    out_h, out_w = size
    out = np.empty((n, out_h, out_w), np.uint8)
    for start in range(0, n, _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(masks[start:start + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        resized = cv2.resize(chunk, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        out[start:start + chunk.shape[2]] = resized.reshape(out_h, out_w, -1).transpose(2, 0, 1)
    return out


def discard_tiny_boxes(boxes_rel: np.ndarray, min_size: float = DISCARD_BOX_SIZE) -> np.ndarray:
    """``bool[N]``: boxes (relative xyxy) wider **and** taller than ``min_size``."""
    w = boxes_rel[:, 2] - boxes_rel[:, 0]
    h = boxes_rel[:, 3] - boxes_rel[:, 1]
    return (w > min_size) & (h > min_size)


def resize_targets(masks: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int],
                   size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth of an ``image_size = (H, W)`` image resized to ``size x size``, without
    augmentation (the ``augment=False`` path).

    Returns ``masks uint8[K, size, size]``, ``boxes float32[K, 4]`` relative xyxy clipped to
    ``[0, 1]``, and ``keep int64[K]``: which input instances survived the tiny-box rule.
    """
    h, w = image_size
    scale = np.array([w, h, w, h], np.float32)
    rel = np.clip(boxes.astype(np.float32) / scale, 0.0, 1.0).reshape(-1, 4)
    keep = np.flatnonzero(discard_tiny_boxes(rel))
    return resize_masks(masks[keep], (size, size)), rel[keep], keep


def ssd_augment(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, crowd: np.ndarray,
                rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upstream YOLACT training augmentation of one sample.

    Args:
        image: ``uint8[H, W, 3]`` BGR.
        masks: ``uint8[N, H, W]`` 0/1.
        boxes: ``float32[N, 4]`` xyxy pixels.
        crowd: ``bool[N]``.
        rng: the only source of randomness: same generator state, same output.
        size: output side ``S``.

    Returns ``(image uint8[S, S, 3] BGR, masks uint8[K, S, S], boxes float32[K, 4] relative
    xyxy in [0, 1], keep int64[K])`` where ``keep`` indexes the input instances that
    survive (select labels and crowd flags with it). Inputs are not modified.
    """
    h, w = image.shape[:2]
    if masks.shape[1:] != (h, w) or boxes.shape != (masks.shape[0], 4) or crowd.shape != (masks.shape[0],):
        raise ValueError(f"masks (N, {h}, {w}), boxes (N, 4), crowd (N,) expected for a {h}x{w} image, "
                         f"got {masks.shape}, {boxes.shape}, {crowd.shape}")
    image = photometric_distort(image, rng)

    canvas_h, canvas_w, top, left = expand_placement(h, w, rng)
    canvas_boxes = boxes.astype(np.float32) + np.array([left, top, left, top], np.float32)
    crop = sample_crop_rect(canvas_boxes, crowd, canvas_h, canvas_w, rng)
    if crop is None:
        rect, keep = (0, 0, canvas_w, canvas_h), np.ones(len(boxes), np.bool_)
    else:
        rect, keep = crop
    keep_idx = np.flatnonzero(keep)
    x1, y1, x2, y2 = rect
    new_boxes = canvas_boxes[keep_idx]
    new_boxes[:, :2] = np.maximum(new_boxes[:, :2], (x1, y1)) - (x1, y1)
    new_boxes[:, 2:] = np.minimum(new_boxes[:, 2:], (x2, y2)) - (x1, y1)
    fill = tuple(int(round(v)) for v in EXPAND_FILL_BGR)
    window = _image_window(image, top, left, rect, fill)
    window_masks = _mask_window(masks[keep_idx], top, left, rect)

    crop_h, crop_w = y2 - y1, x2 - x1
    out_image = cv2.resize(window, (size, size), interpolation=cv2.INTER_LINEAR)
    out_masks = resize_masks(window_masks, (size, size))
    rel = new_boxes / np.array([crop_w, crop_h, crop_w, crop_h], np.float32)

    if rng.integers(2):  # RandomMirror (after the resize: same geometry, fewer pixels)
        out_image = out_image[:, ::-1]
        out_masks = out_masks[:, :, ::-1]
        rel = np.stack([1.0 - rel[:, 2], rel[:, 1], 1.0 - rel[:, 0], rel[:, 3]], axis=1)

    ok = discard_tiny_boxes(rel)
    rel = np.clip(rel[ok], 0.0, 1.0).astype(np.float32)
    return (np.ascontiguousarray(out_image), np.ascontiguousarray(out_masks[ok]), rel.reshape(-1, 4),
            keep_idx[ok].astype(np.int64))
