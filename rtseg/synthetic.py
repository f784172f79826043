"""Synthetic scenes with exact instance ground truth: still images and a moving video.

Five shape classes (:data:`CLASS_NAMES`) in flat colours, at random sizes, colours and
rotations, overlapping each other and the image border, on a textured, cluttered
background. The clutter (lines, arcs, thin bars, elongated ellipses, in the same colours
as the objects) is never an object; a few thin foreground lines may also cross objects
and cut their masks. Objects differ from clutter only by shape, so a model has to learn
shapes, not colours or flatness.

Ground truth is exact by construction: every shape is rasterised without anti-aliasing
into an "owner" map (``uint8[H, W]``, 0 = background, ``k + 1`` = object ``k``, 255
downwards = foreground clutter) in painter's order, and the image takes each object's
colour exactly where the owner map names it. So an object's mask is precisely the set of
pixels showing its colour, masks of different objects are disjoint, and a ring's hole
shows whatever lies beneath it.

Used as the ``synthetic`` video source (:class:`SyntheticVideo`) and to generate training
sets (:func:`render_scene`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from rtseg.structures import Instances

CLASS_NAMES = ("circle", "square", "triangle", "star", "ring")

#: objects showing fewer pixels than this (after occlusion and clipping) are dropped from
#: the ground truth: a handful of pixels cannot be told apart as any class
MIN_VISIBLE_PIXELS = 20

_SHIFT = 4  # cv2 fixed-point bits for sub-pixel vertex positions
_SCALE = float(1 << _SHIFT)
_MAX_OBJECTS = 200  # owner map is uint8: 1..200 objects, 255 downwards foreground clutter


@dataclass(frozen=True)
class Scene:
    """One rendered image with its exact instance ground truth (N visible objects).

    - ``image``: ``uint8[H, W, 3]`` BGR.
    - ``masks``: ``bool[N, H, W]``, the visible pixels of each object (after occlusion by
      objects drawn later and by foreground clutter); pairwise disjoint.
    - ``class_ids``: ``int64[N]``, indices into :data:`CLASS_NAMES`.
    - ``boxes``: ``float32[N, 4]`` xyxy in pixels, tight around the visible mask with the
      pixel-edge convention: ``x1 = min column``, ``x2 = max column + 1`` (so ``x2 - x1``
      is the mask's width in pixels), likewise for y.
    - ``object_ids``: ``int64[N]``, which object each instance is: for
      :class:`SyntheticVideo` the index in its fixed set of objects (stable over frames),
      for :func:`render_scene` the drawing order. Instances are sorted by it.
    """

    image: np.ndarray
    masks: np.ndarray
    class_ids: np.ndarray
    boxes: np.ndarray
    object_ids: np.ndarray

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def to_instances(self) -> Instances:
        """The ground truth as :class:`~rtseg.structures.Instances` with all scores 1."""
        return Instances(
            boxes=self.boxes,
            scores=np.ones(len(self.class_ids), np.float32),
            class_ids=self.class_ids,
            masks=self.masks,
            image_size=self.image_size,
        )


@dataclass(frozen=True)
class _Shape:
    class_id: int
    cx: float  # centre, pixels
    cy: float
    radius: float  # pixels; circumradius-like size, see _shape_polygons
    angle: float  # radians
    hole: float  # ring only: inner radius / outer radius
    colour: tuple[int, int, int]  # BGR


@dataclass(frozen=True)
class _Line:
    x0: float
    y0: float
    x1: float
    y1: float
    thickness: int
    colour: tuple[int, int, int]


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and v >= 16 for v in size)
    ):
        raise ValueError(f"size must be (H, W) with integers >= 16, got {size!r}")
    return int(size[0]), int(size[1])


def _check_n_objects(n_objects: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(n_objects, (tuple, list))
        or len(n_objects) != 2
        or not all(isinstance(v, (int, np.integer)) for v in n_objects)
        or not 0 <= n_objects[0] <= n_objects[1] <= _MAX_OBJECTS
    ):
        raise ValueError(f"n_objects must be (min, max) with 0 <= min <= max <= {_MAX_OBJECTS}, got {n_objects!r}")
    return int(n_objects[0]), int(n_objects[1])


# --------------------------------------------------------------------------------------
# random parts
# --------------------------------------------------------------------------------------
def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """``uint8[n, 3]`` BGR colours, fairly saturated, not too dark."""
    hsv = np.empty((1, n, 3), np.uint8)
    hsv[0, :, 0] = rng.integers(0, 180, n)  # OpenCV hue range
    hsv[0, :, 1] = rng.integers(90, 256, n)
    hsv[0, :, 2] = rng.integers(90, 256, n)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]


def _textured_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``uint8[h, w, 3]``: gradient + smooth noise + grain + clutter that is not an object."""
    # gradient and two octaves of smooth noise, built at 1/8 and 1/32 scale, upsampled once
    sh, sw = h // 8 + 2, w // 8 + 2
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = xx * math.cos(theta) + yy * math.sin(theta)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    c0, c1 = rng.uniform(30, 220, 3).astype(np.float32), rng.uniform(30, 220, 3).astype(np.float32)
    field = c0 + ramp[..., None] * (c1 - c0)
    coarse = rng.normal(0, 40, (h // 32 + 2, w // 32 + 2, 3)).astype(np.float32)
    field += cv2.resize(coarse, (sw, sh), interpolation=cv2.INTER_CUBIC)
    field += rng.normal(0, 14, (sh, sw, 3)).astype(np.float32)
    field = np.clip(field, 0, 255).astype(np.uint8)  # clip at low resolution: cheap
    image = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)  # uint8 resize saturates
    grain = rng.integers(0, 18, (h, w), dtype=np.uint8)
    image = cv2.add(image, cv2.merge([grain, grain, grain]))

    # clutter: shapes from none of the classes, in object-like colours
    scale = min(h, w)
    n_clutter = int(rng.integers(8, 20))
    colours = _random_colours(rng, n_clutter)
    for i in range(n_clutter):
        colour = tuple(int(c) for c in colours[i])
        line_type = cv2.LINE_AA if rng.random() < 0.5 else cv2.LINE_8
        kind = rng.integers(0, 4)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        angle_deg = rng.uniform(0, 360)
        if kind == 0:  # straight line
            length = rng.uniform(0.1, 0.6) * scale
            dx, dy = length * math.cos(math.radians(angle_deg)), length * math.sin(math.radians(angle_deg))
            cv2.line(image, (int(cx), int(cy)), (int(cx + dx), int(cy + dy)), colour, int(rng.integers(1, 5)), line_type)
        elif kind == 1:  # elongated filled ellipse (aspect >= 2.5: no circle look-alike)
            a = rng.uniform(0.03, 0.12) * scale
            b = a / rng.uniform(2.5, 6.0)
            cv2.ellipse(image, (int(cx), int(cy)), (int(a), max(1, int(b))), angle_deg, 0, 360, colour, -1, line_type)
        elif kind == 2:  # open arc (at most 3/4 of an ellipse: no ring look-alike)
            a = rng.uniform(0.03, 0.15) * scale
            b = a * rng.uniform(0.3, 1.0)
            start = rng.uniform(0, 360)
            cv2.ellipse(image, (int(cx), int(cy)), (int(a), max(1, int(b))), angle_deg, start,
                        start + rng.uniform(60, 270), colour, int(rng.integers(1, 5)), line_type)
        else:  # thin bar (aspect >= 4: no square look-alike)
            length = rng.uniform(0.05, 0.3) * scale
            width = length / rng.uniform(4.0, 10.0)
            box = cv2.boxPoints(((cx, cy), (length, max(width, 1.0)), angle_deg))
            cv2.fillPoly(image, [np.round(box).astype(np.int32)], colour, line_type)
    return image


def _random_shape(rng: np.random.Generator, h: int, w: int, background: np.ndarray) -> _Shape:
    scale = min(h, w)
    radius = float(math.exp(rng.uniform(math.log(0.035 * scale), math.log(0.16 * scale))))
    cx = rng.uniform(-0.3 * radius, w + 0.3 * radius)
    cy = rng.uniform(-0.3 * radius, h + 0.3 * radius)
    # keep the object distinguishable from the background right under its centre
    under = background[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))].astype(np.int32)
    colours = _random_colours(rng, 6)
    diffs = np.abs(colours.astype(np.int32) - under).sum(axis=1)
    colour = colours[int(np.argmax(diffs >= 90)) if (diffs >= 90).any() else int(np.argmax(diffs))]
    return _Shape(
        class_id=int(rng.integers(0, len(CLASS_NAMES))),
        cx=float(cx),
        cy=float(cy),
        radius=radius,
        angle=float(rng.uniform(0, 2 * math.pi)),
        hole=float(rng.uniform(0.45, 0.65)),
        colour=(int(colour[0]), int(colour[1]), int(colour[2])),
    )


def _foreground_lines(rng: np.random.Generator, h: int, w: int, n_max: int) -> list[_Line]:
    n = int(rng.integers(0, n_max + 1))
    colours = _random_colours(rng, max(n, 1))
    lines = []
    for i in range(n):
        lines.append(
            _Line(
                x0=float(rng.uniform(0, w)), y0=float(rng.uniform(0, h)),
                x1=float(rng.uniform(0, w)), y1=float(rng.uniform(0, h)),
                thickness=int(rng.integers(1, 3)),
                colour=(int(colours[i, 0]), int(colours[i, 1]), int(colours[i, 2])),
            )
        )
    return lines


# --------------------------------------------------------------------------------------
# rasterisation
# --------------------------------------------------------------------------------------
def _regular_polygon(cx: float, cy: float, radii: np.ndarray, angle: float) -> np.ndarray:
    """Vertices at equal angular steps, one per radius, as float ``[K, 2]`` (x, y)."""
    k = len(radii)
    t = angle + np.arange(k) * (2 * math.pi / k)
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)


def _shape_polygons(s: _Shape) -> list[np.ndarray]:
    """Contours to fill (even-odd) for a shape, as float ``[K, 2]`` arrays in pixels.

    Sizes are chosen so the classes have similar areas for the same ``radius``.
    """
    r = s.radius
    if s.class_id == 0:  # circle
        n = max(16, min(96, int(r)))
        return [_regular_polygon(s.cx, s.cy, np.full(n, r), s.angle)]
    if s.class_id == 1:  # square, half-diagonal 1.2 r
        return [_regular_polygon(s.cx, s.cy, np.full(4, 1.2 * r), s.angle)]
    if s.class_id == 2:  # equilateral triangle, circumradius 1.4 r
        return [_regular_polygon(s.cx, s.cy, np.full(3, 1.4 * r), s.angle)]
    if s.class_id == 3:  # five-pointed star
        return [_regular_polygon(s.cx, s.cy, np.tile([1.4 * r, 0.6 * r], 5), s.angle)]
    if s.class_id == 4:  # ring: outer and inner contour, the hole stays see-through
        n = max(16, min(96, int(r)))
        return [
            _regular_polygon(s.cx, s.cy, np.full(n, r), s.angle),
            _regular_polygon(s.cx, s.cy, np.full(n, r * s.hole), s.angle),
        ]
    raise AssertionError(f"unknown class id {s.class_id}")


def _compose(background: np.ndarray, shapes: list[_Shape], lines: list[_Line], object_ids: list[int]) -> Scene:
    """Draw ``shapes`` (painter's order) and foreground ``lines`` over a copy of ``background``."""
    h, w = background.shape[:2]
    assert len(shapes) <= _MAX_OBJECTS and len(lines) < 255 - _MAX_OBJECTS
    owner = np.zeros((h, w), np.uint8)
    palette = np.zeros((256, 3), np.uint8)
    rects: list[tuple[int, int, int, int] | None] = []
    for k, s in enumerate(shapes):
        contours = _shape_polygons(s)
        outer = contours[0]
        x0, y0 = np.floor(outer.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(outer.max(axis=0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x0 >= x1 or y0 >= y1:
            rects.append(None)
            continue
        pts = [np.round(c * _SCALE).astype(np.int32) for c in contours]
        cv2.fillPoly(owner, pts, k + 1, cv2.LINE_8, _SHIFT)
        palette[k + 1] = s.colour
        rects.append((x0, y0, x1, y1))
    for j, ln in enumerate(lines):
        value = 255 - j
        p0 = (int(round(ln.x0 * _SCALE)), int(round(ln.y0 * _SCALE)))
        p1 = (int(round(ln.x1 * _SCALE)), int(round(ln.y1 * _SCALE)))
        cv2.line(owner, p0, p1, value, ln.thickness, cv2.LINE_8, _SHIFT)
        palette[value] = ln.colour

    coloured = cv2.LUT(cv2.merge([owner, owner, owner]), palette.reshape(1, 256, 3))
    image = cv2.copyTo(coloured, (owner != 0).view(np.uint8), background.copy())

    keep_masks, keep_boxes, keep_classes, keep_ids = [], [], [], []
    for k, rect in enumerate(rects):
        if rect is None:
            continue
        x0, y0, x1, y1 = rect
        sub = owner[y0:y1, x0:x1] == (k + 1)
        if int(np.count_nonzero(sub)) < MIN_VISIBLE_PIXELS:
            continue
        rows = np.flatnonzero(sub.any(axis=1))
        cols = np.flatnonzero(sub.any(axis=0))
        mask = np.zeros((h, w), np.bool_)
        mask[y0:y1, x0:x1] = sub
        keep_masks.append(mask)
        keep_boxes.append((x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1))
        keep_classes.append(shapes[k].class_id)
        keep_ids.append(object_ids[k])
    n = len(keep_masks)
    return Scene(
        image=image,
        masks=np.stack(keep_masks) if n else np.zeros((0, h, w), np.bool_),
        class_ids=np.asarray(keep_classes, np.int64).reshape(n),
        boxes=np.asarray(keep_boxes, np.float32).reshape(n, 4),
        object_ids=np.asarray(keep_ids, np.int64).reshape(n),
    )


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------
def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (480, 640),
    n_objects: tuple[int, int] = (2, 8),
) -> Scene:
    """Render one random scene of ``size = (H, W)`` pixels.

    Draws between ``n_objects[0]`` and ``n_objects[1]`` objects (inclusive); objects that end
    up fully hidden or showing fewer than :data:`MIN_VISIBLE_PIXELS` pixels are not in the
    returned ground truth, so ``len(scene.class_ids)`` may be smaller. The result depends
    only on the state of ``rng``.
    """
    h, w = _check_size(size)
    lo, hi = _check_n_objects(n_objects)
    background = _textured_background(rng, h, w)
    n = int(rng.integers(lo, hi + 1))
    shapes = [_random_shape(rng, h, w, background) for _ in range(n)]
    lines = _foreground_lines(rng, h, w, n_max=2)
    return _compose(background, shapes, lines, list(range(n)))


def _bounce(start: float, velocity: float, t: float, lo: float, hi: float) -> float:
    """Position at time ``t`` of a point moving at ``velocity`` and reflecting off ``lo``/``hi``."""
    span = hi - lo
    if span <= 0:
        return lo
    u = (start - lo + velocity * t) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


class SyntheticVideo:
    """A deterministic video of moving, overlapping shapes with exact ground truth.

    A fixed set of ``n_objects`` objects moves in straight lines at constant speed
    (1-4 px per frame at 640 px width), bouncing off the walls of its own box, and spins
    slowly. Some boxes reach beyond the image, so those objects leave the picture for a
    while and come back. Objects are drawn in a fixed depth order, so they occlude each
    other consistently. The textured background (made once) pans slowly.

    ``frame(i)`` is a pure function of ``(seed, size, n_objects, i)``: random access, same
    arguments, same pixels. ``size`` is ``(H, W)``; the default is 640x480.
    """

    def __init__(self, seed: int = 0, size: tuple[int, int] = (480, 640), n_objects: int = 8) -> None:
        self.size = _check_size(size)
        if not isinstance(n_objects, (int, np.integer)) or not 0 <= n_objects <= _MAX_OBJECTS:
            raise ValueError(f"n_objects must be an int in [0, {_MAX_OBJECTS}], got {n_objects!r}")
        self.seed = int(seed)
        self.n_objects = int(n_objects)
        h, w = self.size
        rng = np.random.default_rng(self.seed)
        self._pan = max(4, min(h, w) // 20)  # pixels of slack on each side of the background
        self._pan_period = rng.uniform(400, 900, 2)  # frames per pan cycle (x, y)
        self._pan_phase = rng.uniform(0, 2 * math.pi, 2)
        self._background = _textured_background(rng, h + 2 * self._pan, w + 2 * self._pan)
        centre_bg = self._background[self._pan:self._pan + h, self._pan:self._pan + w]
        self._shapes = [_random_shape(rng, h, w, centre_bg) for _ in range(self.n_objects)]
        # every class appears at least once when there are enough objects
        classes = rng.permutation(np.resize(np.arange(len(CLASS_NAMES)), self.n_objects))
        speed_unit = w / 640.0
        self._motion = []
        for s, cls in zip(self._shapes, classes):
            speed = rng.uniform(1.0, 4.0) * speed_unit
            heading = rng.uniform(0, 2 * math.pi)
            # margin in radii beyond the image edge: > 1.5 lets the object leave completely
            margin = rng.choice([rng.uniform(-0.6, 0.3), rng.uniform(1.5, 3.0)], p=[0.7, 0.3]) * s.radius
            self._motion.append(
                dict(
                    class_id=int(cls),
                    vx=speed * math.cos(heading),
                    vy=speed * math.sin(heading),
                    spin=rng.uniform(-0.03, 0.03),  # radians per frame
                    box=(-margin, -margin, w + margin, h + margin),
                )
            )
        self._lines = _foreground_lines(rng, h, w, n_max=1)

    def frame(self, i: int) -> Scene:
        """The scene at frame index ``i >= 0``."""
        if not isinstance(i, (int, np.integer)) or i < 0:
            raise ValueError(f"frame index must be an int >= 0, got {i!r}")
        h, w = self.size
        ox = int(round(self._pan * (1 + math.sin(2 * math.pi * i / self._pan_period[0] + self._pan_phase[0]))))
        oy = int(round(self._pan * (1 + math.sin(2 * math.pi * i / self._pan_period[1] + self._pan_phase[1]))))
        background = self._background[oy:oy + h, ox:ox + w]
        shapes = []
        for s, m in zip(self._shapes, self._motion):
            x0, y0, x1, y1 = m["box"]
            shapes.append(
                _Shape(
                    class_id=m["class_id"],
                    cx=_bounce(s.cx, m["vx"], i, x0, x1),
                    cy=_bounce(s.cy, m["vy"], i, y0, y1),
                    radius=s.radius,
                    angle=s.angle + m["spin"] * i,
                    hole=s.hole,
                    colour=s.colour,
                )
            )
        return _compose(background, shapes, self._lines, list(range(self.n_objects)))
