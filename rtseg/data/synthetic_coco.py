"""Write a COCO-format instance segmentation set of synthetic shape scenes.

Layout (what :class:`rtseg.data.coco.CocoInstanceDataset` reads by default)::

    out_dir/images/000000.png ...   the rendered scenes (BGR written by OpenCV)
    out_dir/annotations.json        COCO "instances" JSON, masks as compressed RLE
    out_dir/SOURCE.txt              how the set was made (generator version, seed, count)

Images are PNG by default: lossless, so every pixel is exactly what
:func:`rtseg.synthetic.render_scene` drew, the masks stay pixel-exact against the image,
and the training images match the frames of the ``synthetic`` video source (which are
never compressed). The cost is size: about 350 KB per 512x384 image against about 95 KB
for JPEG quality 95, whose ringing (mean absolute error about 2.5 grey levels on these
images) sits exactly on the mask edges a model must learn. ``image_format="jpg"`` is there
for large sets where disk matters more.

Image ``k`` (0-based, file ``{k:06d}``, COCO image id ``k``) is rendered from its own
stream ``default_rng(SeedSequence(seed, spawn_key=(k,)))``: the set is deterministic, any
single image can be re-rendered alone, and a larger set with the same seed starts with the
same images as a smaller one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys

import cv2
import numpy as np

from rtseg.errors import ConfigError

#: bump when the same (seed, size, n_objects) would give different images or annotations
GENERATOR_VERSION = 1
_FORMATS = {"png": (".png", (cv2.IMWRITE_PNG_COMPRESSION, 3)), "jpg": (".jpg", (cv2.IMWRITE_JPEG_QUALITY, 95))}
_OWN_IMAGE = re.compile(r"^\d{6}\.(png|jpg)$")


def _check_args(images: int, seed: int, size, n_objects, image_format: str) -> tuple[tuple[int, int], tuple[int, int]]:
    if not isinstance(images, int) or isinstance(images, bool) or images < 1:
        raise ConfigError(f"number of images must be an integer >= 1, got {images!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if image_format not in _FORMATS:
        raise ConfigError(f"image format must be one of {', '.join(_FORMATS)}, got {image_format!r}")
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) and v >= 16 for v in size)):
        raise ConfigError(f"image size must be (H, W) with integers >= 16, got {size!r}")
    if not (isinstance(n_objects, (tuple, list)) and len(n_objects) == 2
            and all(isinstance(v, int) for v in n_objects) and 0 <= n_objects[0] <= n_objects[1] <= 200):
        raise ConfigError(f"objects per image must be (min, max) with 0 <= min <= max <= 200, got {n_objects!r}")
    return (int(size[0]), int(size[1])), (int(n_objects[0]), int(n_objects[1]))


def _prepare_folder(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"output folder '{out_dir}' exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise ConfigError(f"output folder '{out_dir}' is not empty; choose an empty or new folder, or overwrite it explicitly")
        # remove only what this generator writes
        for name in ("annotations.json", "SOURCE.txt"):
            path = os.path.join(out_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        image_dir = os.path.join(out_dir, "images")
        if os.path.isdir(image_dir):
            for name in os.listdir(image_dir):
                if _OWN_IMAGE.match(name):
                    os.remove(os.path.join(image_dir, name))
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream image ``index`` of a set with ``seed`` is rendered from."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _render_one(job: tuple) -> tuple[str, list[tuple]]:
    """Render and write image ``k``; return its file name and ``(rle, area, box, class)`` per object."""
    from rtseg.synthetic import render_scene

    seed, k, h, w, lo, hi, out_dir, ext, params = job
    scene = render_scene(image_rng(seed, k), (h, w), (lo, hi))
    file_name = f"{k:06d}{ext}"
    path = os.path.join(out_dir, "images", file_name)
    if not cv2.imwrite(path, scene.image, list(params)):
        raise ConfigError(f"could not write image '{path}' (is the folder writable and the disk not full?)")
    rles = scene.to_instances().to_rle()  # pycocotools compressed RLE, counts as str
    areas = scene.masks.reshape(len(rles), -1).sum(axis=1) if rles else []
    objects = [(rle, float(area), tuple(float(v) for v in box), int(cls))
               for rle, area, box, cls in zip(rles, areas, scene.boxes, scene.class_ids)]
    return file_name, objects


def generate_dataset(out_dir: str, *, images: int, seed: int, size: tuple[int, int] = (384, 512),
                     n_objects: tuple[int, int] = (2, 8), image_format: str = "png",
                     overwrite: bool = False, progress: bool = False, workers: int = 1) -> str:
    """Render ``images`` synthetic scenes into a COCO-format folder; returns the path of
    its ``annotations.json``.

    Args:
        out_dir: created if missing; must be empty unless ``overwrite`` (which removes only
            files this generator writes: ``annotations.json``, ``SOURCE.txt``,
            ``images/NNNNNN.png|jpg``).
        images: number of images (>= 1).
        seed: non-negative; same arguments, same files.
        size: ``(H, W)`` in pixels.
        n_objects: ``(min, max)`` objects drawn per image (fewer may stay visible).
        image_format: ``"png"`` (lossless, default) or ``"jpg"`` (quality 95).
        progress: print a line to stderr every 10% of images.
        workers: processes rendering images in parallel; the files are the same for any
            number (image ``k`` depends only on ``seed`` and ``k``).

    Categories are ids ``1..5`` named by :data:`rtseg.synthetic.CLASS_NAMES`;
    annotations hold compressed RLE (``counts`` a string), ``area`` in pixels, tight
    ``bbox`` ``[x, y, w, h]`` with the pixel-edge convention, and ``iscrowd`` 0.
    """
    from rtseg import __version__ as rtseg_version
    from rtseg.synthetic import CLASS_NAMES

    (h, w), (lo, hi) = _check_args(images, seed, size, n_objects, image_format)
    _prepare_folder(out_dir, overwrite)
    ext, params = _FORMATS[image_format]
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    image_entries, annotations = [], []
    jobs = [(seed, k, h, w, lo, hi, out_dir, ext, params) for k in range(images)]
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        rendered = pool.imap(_render_one, jobs, chunksize=8) if pool else map(_render_one, jobs)
        for k, (file_name, objects) in enumerate(rendered):
            image_entries.append({"id": k, "file_name": file_name, "height": h, "width": w})
            for rle, area, box, cls in objects:
                x1, y1, x2, y2 = box
                annotations.append({
                    "id": len(annotations) + 1,  # pycocotools' matcher needs ids > 0
                    "image_id": k,
                    "category_id": cls + 1,
                    "segmentation": rle,
                    "area": area,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                })
            if progress and images >= 10 and (k + 1) % max(1, images // 10) == 0:
                print(f"generated {k + 1}/{images} images", file=sys.stderr, flush=True)
    finally:
        if pool:
            pool.close()
            pool.join()

    coco = {
        "info": {
            "description": "rtseg synthetic shapes (rtseg.data.synthetic_coco)",
            "version": str(GENERATOR_VERSION),
            "contributor": f"rtseg {rtseg_version}",
            "seed": seed,
        },
        "licenses": [],
        "images": image_entries,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)],
    }
    # annotations.json last: an interrupted run leaves a folder the dataset loader refuses
    with open(os.path.join(out_dir, "SOURCE.txt"), "w", encoding="utf-8") as f:
        f.write(
            "rtseg synthetic shapes, COCO instance segmentation format\n"
            f"generator: rtseg.data.synthetic_coco version {GENERATOR_VERSION} (rtseg {rtseg_version})\n"
            f"seed: {seed}\n"
            f"images: {images}\n"
            f"instances: {len(annotations)}\n"
            f"size (H, W): {h} x {w}\n"
            f"objects drawn per image: {lo}..{hi}\n"
            f"image format: {image_format}\n"
            f"classes (category ids 1..{len(CLASS_NAMES)}): {', '.join(CLASS_NAMES)}\n"
            "image k is rendered by rtseg.synthetic.render_scene from "
            "numpy.random.default_rng(SeedSequence(seed, spawn_key=(k,)))\n"
            "licence: generated data, no third-party content\n"
        )
    ann_path = os.path.join(out_dir, "annotations.json")
    tmp_path = ann_path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(coco, f, separators=(",", ":"))
    os.replace(tmp_path, ann_path)
    return ann_path
