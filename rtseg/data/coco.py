"""COCO-format instance segmentation folders: validated loading, a torch Dataset, collate.

Default folder layout (what :mod:`rtseg.data.synthetic_coco` writes)::

    root/annotations.json        COCO "instances" JSON: images, annotations, categories
    root/images/<file_name>      one image per entry of "images"

Segmentations may be polygons, compressed RLE (``counts`` a string) or uncompressed RLE
(``counts`` a list, as COCO uses for crowds); all are decoded with pycocotools.
Categories map to contiguous 0-based labels in category-id order, so ``class_names[k]``
is the name of the ``k``-th smallest category id.

Everything a user can get wrong here (a missing folder, a broken JSON, an annotation
pointing at an unknown image, a missing image file) raises :class:`ConfigError` with one
line naming what was expected and what was found. Annotations that load but are damaged
(polygon parts with fewer than 3 points, boxes with a negative width or height, masks
with no pixel) are repaired where they can be, counted (:attr:`CocoFolder.problems`) and
reported in one warning line per file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from rtseg.data import augment as aug
from rtseg.errors import ConfigError
from rtseg.families.yolact.network import YolactConfig
from rtseg.families.yolact.preprocess import preprocess

log = logging.getLogger(__name__)

#: default annotation file and image folder inside a dataset root
DEFAULT_ANNOTATIONS = "annotations.json"
DEFAULT_IMAGES_DIR = "images"

#: what ``load_coco_folder`` counts in :attr:`CocoFolder.problems`, and how it says it
ANNOTATION_PROBLEMS = {
    "short_polygon_parts": "polygon part(s) with fewer than 3 points (dropped)",
    "negative_boxes": "box(es) with a negative width or height (replaced by the mask's extent)",
    "empty_masks": "annotation(s) whose mask has no pixel",
}

_REQUIRED = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("image_id", "category_id", "segmentation"),
    "categories": ("id", "name"),
}


# --------------------------------------------------------------------------------------
# segmentation -> RLE
# --------------------------------------------------------------------------------------
def _empty_rle(h: int, w: int) -> dict:
    return mask_utils.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]


def segmentation_to_rle(segm: Any, h: int, w: int) -> dict:
    """A COCO ``segmentation`` (polygons, compressed or uncompressed RLE) of an ``h x w``
    image -> one compressed RLE dict ``{"size": [h, w], "counts": bytes}``.

    Polygon parts with fewer than 3 points are skipped (pycocotools would read a
    4-number part as a box); a polygon list with no valid part gives an empty mask.
    Raises ``ValueError`` for anything else (the caller names the annotation).
    """
    if isinstance(segm, list):
        parts = [[float(v) for v in p] for p in segm if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0]
        if not parts:
            return _empty_rle(h, w)
        return mask_utils.merge(mask_utils.frPyObjects(parts, h, w))
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = [int(v) for v in segm["size"]]
        if size != [h, w]:
            raise ValueError(f"RLE size {size} differs from the image size [{h}, {w}]")
        counts = segm["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects({"size": size, "counts": counts}, h, w)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        if not isinstance(counts, bytes):
            raise ValueError(f"RLE counts must be a string or a list of ints, got {type(counts).__name__}")
        return {"size": size, "counts": counts}
    raise ValueError(f"segmentation must be a list of polygons or an RLE dict with 'size' and 'counts', got {type(segm).__name__}")


def decode_masks(rles: list[dict], h: int, w: int) -> np.ndarray:
    """Compressed RLEs -> ``uint8[N, h, w]`` (0/1)."""
    if not rles:
        return np.zeros((0, h, w), np.uint8)
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))


# --------------------------------------------------------------------------------------
# folder loading and validation
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CocoFolder:
    """A validated COCO-format folder.

    - ``dataset``: the annotation JSON with every annotation completed (``id``,
      ``iscrowd`` default 0, ``bbox`` and ``area`` computed from the mask when missing,
      degenerate polygon parts dropped): ready for pycocotools' ``COCO``.
    - ``images``: the image entries sorted by id.
    - ``categories``: the category entries sorted by id.
    - ``annotations_by_image``: image id -> its annotations, non-crowd first, then crowds
      (upstream YOLACT's order), each group in file order.
    - ``problems``: what was wrong with annotations that still loaded, counted by kind
      (:data:`ANNOTATION_PROBLEMS`; only kinds that occurred); logged as one warning.
    - ``usable_annotations``: non-crowd annotations whose mask has at least one pixel,
      what training learns from.
    """

    root: str
    ann_path: str
    images_dir: str
    dataset: dict
    images: tuple[dict, ...]
    categories: tuple[dict, ...]
    annotations_by_image: dict[int, list[dict]]
    problems: dict[str, int] = field(default_factory=dict)
    usable_annotations: int = 0

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(str(c["name"]) for c in self.categories)

    @property
    def category_ids(self) -> tuple[int, ...]:
        return tuple(int(c["id"]) for c in self.categories)

    def image_path(self, image: dict) -> str:
        return os.path.join(self.images_dir, str(image["file_name"]))

    def to_coco(self):
        """A pycocotools ``COCO`` over :attr:`dataset` (its index messages suppressed)."""
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = self.dataset
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


def _resolve_ann_path(root: str, ann_file: str | None) -> str:
    if ann_file is None:
        return os.path.join(root, DEFAULT_ANNOTATIONS)
    if os.path.isabs(ann_file) or os.path.exists(ann_file):
        return ann_file
    return os.path.join(root, ann_file)


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"annotations file '{path}' not found (expected a COCO-format JSON with 'images', 'annotations', 'categories')")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"annotations file '{path}' is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"annotations file '{path}' cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"annotations file '{path}' must hold a JSON object with 'images', 'annotations', 'categories', got a {type(data).__name__}")
    for key in _REQUIRED:
        if key not in data:
            raise ConfigError(f"annotations file '{path}' has no '{key}' key (a COCO file needs 'images', 'annotations' and 'categories')")
        if not isinstance(data[key], list):
            raise ConfigError(f"annotations file '{path}': '{key}' must be a list, got {type(data[key]).__name__}")
    for key, fields in _REQUIRED.items():
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise ConfigError(f"annotations file '{path}': {key}[{i}] must be an object, got {type(entry).__name__}")
            for field in fields:
                if field not in entry:
                    raise ConfigError(f"annotations file '{path}': {key}[{i}] has no '{field}' key (each entry of '{key}' needs {', '.join(fields)})")
    return data


def _unique_ids(path: str, entries: list[dict], what: str) -> dict[int, dict]:
    by_id: dict[int, dict] = {}
    for e in entries:
        i = e["id"]
        if not isinstance(i, int) or isinstance(i, bool):
            raise ConfigError(f"annotations file '{path}': {what} id must be an integer, got {i!r}")
        if i in by_id:
            raise ConfigError(f"annotations file '{path}': {what} id {i} appears more than once")
        by_id[i] = e
    return by_id


def load_coco_folder(root: str, ann_file: str | None = None, *, images_dir: str | None = None,
                     check_files: bool = True) -> CocoFolder:
    """Read and validate a COCO-format folder.

    Args:
        root: the dataset folder.
        ann_file: the annotation JSON; default ``root/annotations.json``. A relative path
            that does not exist from the working directory is taken relative to ``root``.
        images_dir: where ``file_name`` paths start; default ``root/images``.
        check_files: check up front that every image file exists (one ``stat`` each).
    """
    if not os.path.isdir(root):
        raise ConfigError(f"dataset folder '{root}' does not exist or is not a folder (expected {DEFAULT_ANNOTATIONS} and {DEFAULT_IMAGES_DIR}/ in it)")
    ann_path = _resolve_ann_path(root, ann_file)
    images_dir = images_dir if images_dir is not None else os.path.join(root, DEFAULT_IMAGES_DIR)
    data = _read_json(ann_path)
    images = _unique_ids(ann_path, data["images"], "image")
    categories = _unique_ids(ann_path, data["categories"], "category")
    if not categories:
        raise ConfigError(f"annotations file '{ann_path}' lists no categories (expected at least one in 'categories')")
    for img in images.values():
        h, w = img["height"], img["width"]
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise ConfigError(f"annotations file '{ann_path}': image id {img['id']} must have positive integer height/width, got {h!r} x {w!r}")

    used_ids = {a["id"] for a in data["annotations"] if isinstance(a.get("id"), int) and a["id"] > 0}
    next_id = max(used_ids, default=0) + 1
    completed: list[dict] = []
    seen_ids: set[int] = set()
    problems = dict.fromkeys(ANNOTATION_PROBLEMS, 0)
    usable = 0
    plain: dict[int, list[dict]] = {i: [] for i in images}
    crowds: dict[int, list[dict]] = {i: [] for i in images}
    for k, ann in enumerate(data["annotations"]):
        where = f"annotations file '{ann_path}': annotations[{k}]"
        img = images.get(ann["image_id"])
        if img is None:
            raise ConfigError(f"{where} refers to image id {ann['image_id']!r}, which is not in 'images'")
        if ann["category_id"] not in categories:
            raise ConfigError(f"{where} has category_id {ann['category_id']!r}, expected one of {sorted(categories)}")
        ann = dict(ann)
        h, w = img["height"], img["width"]
        try:
            rle = segmentation_to_rle(ann["segmentation"], h, w)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where} has an invalid segmentation: {e}") from None
        if isinstance(ann["segmentation"], list):  # degenerate parts dropped, as decoded
            parts = [p for p in ann["segmentation"] if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0]
            problems["short_polygon_parts"] += len(ann["segmentation"]) - len(parts)
            ann["segmentation"] = parts if parts else {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        mask_area = float(mask_utils.area(rle))
        if mask_area == 0:
            problems["empty_masks"] += 1
        elif not ann.get("iscrowd", 0):
            usable += 1
        if not (isinstance(ann.get("id"), int) and ann["id"] > 0) or ann["id"] in seen_ids:
            ann["id"] = next_id  # missing, invalid or repeated: pycocotools needs unique ids > 0
            next_id += 1
        seen_ids.add(ann["id"])
        ann["iscrowd"] = int(bool(ann.get("iscrowd", 0)))
        if "bbox" not in ann:
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
        elif not (isinstance(ann["bbox"], (list, tuple)) and len(ann["bbox"]) == 4
                  and all(isinstance(v, (int, float)) for v in ann["bbox"])):
            raise ConfigError(f"{where} has bbox {ann['bbox']!r}, expected [x, y, width, height] numbers")
        elif ann["bbox"][2] < 0 or ann["bbox"][3] < 0:
            problems["negative_boxes"] += 1
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]  # all zeros for an empty mask
        if "area" not in ann:
            ann["area"] = mask_area
        completed.append(ann)
        (crowds if ann["iscrowd"] else plain)[img["id"]].append(ann)

    sorted_images = tuple(images[i] for i in sorted(images))
    if check_files:
        missing = [img for img in sorted_images if not os.path.isfile(os.path.join(images_dir, str(img["file_name"])))]
        if missing:
            first = missing[0]
            raise ConfigError(f"image file '{os.path.join(images_dir, str(first['file_name']))}' (image id {first['id']}) not found; "
                              f"{len(missing)} of {len(sorted_images)} images are missing")
    problems = {kind: n for kind, n in problems.items() if n}
    if problems:
        log.warning("annotations file '%s': %s, in %d annotations (%d usable: non-crowd with a non-empty mask)",
                    ann_path, ", ".join(f"{n} {ANNOTATION_PROBLEMS[kind]}" for kind, n in problems.items()),
                    len(completed), usable)
    dataset = dict(data, annotations=completed)
    return CocoFolder(
        root=root,
        ann_path=ann_path,
        images_dir=images_dir,
        dataset=dataset,
        images=sorted_images,
        categories=tuple(categories[i] for i in sorted(categories)),
        annotations_by_image={i: plain[i] + crowds[i] for i in images},
        problems=problems,
        usable_annotations=usable,
    )


def read_image(folder: CocoFolder, image: dict) -> np.ndarray:
    """The image of an entry of ``folder.images`` as ``uint8[H, W, 3]`` BGR; checks its size
    against the JSON's ``height`` / ``width``."""
    path = folder.image_path(image)
    pixels = cv2.imread(path, cv2.IMREAD_COLOR)
    if pixels is None:
        what = "not found" if not os.path.isfile(path) else "cannot be decoded as an image"
        raise ConfigError(f"image file '{path}' (image id {image['id']}) {what}")
    if pixels.shape[:2] != (image["height"], image["width"]):
        raise ConfigError(f"image file '{path}' is {pixels.shape[0]}x{pixels.shape[1]} (HxW) but the annotations say "
                          f"{image['height']}x{image['width']}")
    return pixels


# --------------------------------------------------------------------------------------
# torch dataset
# --------------------------------------------------------------------------------------
class CocoInstanceDataset(torch.utils.data.Dataset):
    """Training / validation samples from a COCO-format folder, for YOLACT.

    Args:
        root: the dataset folder (see the module docstring for the layout).
        ann_file: annotation JSON (default ``root/annotations.json``).
        size: square network input side ``S`` in pixels (e.g. 384, 550).
        augment: ``True``: upstream YOLACT's training augmentation
            (:func:`rtseg.data.augment.ssd_augment`); ``False``: a plain square resize.
        seed: seeds the augmentation. The random stream of sample ``i`` is
            ``default_rng([seed, epoch, i])``, so a sample is reproducible regardless of
            which worker loads it; call :meth:`set_epoch` each epoch to get new draws.
        images_dir: where image ``file_name`` paths start (default ``root/images``).
        preprocess: the model family's input transform, ``uint8[1, S, S, 3]`` BGR ->
            ``float32[1, 3, S, S]`` (e.g. ``partial(SOLOV2.preprocess, cfg=cfg)``); it always
            receives a square ``S x S`` image (without augmentation the image is first
            resized with ``cv2.INTER_LINEAR``, as the masks are). ``None``: YOLACT's
            :func:`rtseg.families.yolact.preprocess.preprocess` of the image as it is.

    ``dataset[i]`` is a dict (``N`` = kept instances, after augmentation):

    - ``image``: ``float32[3, S, S]``, exactly ``rtseg.families.yolact.preprocess.preprocess`` of
      the (augmented) ``uint8`` BGR image: normalised RGB (or ``preprocess``'s output when
      given). With ``augment=False`` and YOLACT's preprocessing it is ``preprocess`` of the
      original image, i.e. what the Segmenter feeds the network.
    - ``boxes``: ``float32[N, 4]`` xyxy relative to the input, in ``[0, 1]``; taken from
      the annotation's ``bbox`` (or the mask's extent when absent), as upstream does.
    - ``labels``: ``int64[N]`` 0-based class (index into :attr:`class_names`).
    - ``masks``: ``uint8[N, S, S]`` 0/1.
    - ``crowd``: ``bool[N]``; crowds come after all other instances.
    - ``image_id``: ``int``; ``orig_size``: ``(H, W)`` of the original image.

    Boxes no larger than ``4/550`` of the input side in width or height are dropped (in
    both modes; :data:`rtseg.data.augment.DISCARD_BOX_SIZE`). Images without annotations
    give ``N = 0``. The image normalisation is the ResNet one (``normalize=True``) that
    every rtseg YOLACT variant uses.
    """

    def __init__(self, root: str, ann_file: str | None = None, *, size: int, augment: bool, seed: int = 0,
                 images_dir: str | None = None,
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 32:
            raise ConfigError(f"dataset input size must be an integer >= 32, got {size!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"dataset seed must be a non-negative integer, got {seed!r}")
        self.folder = load_coco_folder(root, ann_file, images_dir=images_dir)
        self.size = size
        self.augment = bool(augment)
        self.seed = seed
        self.epoch = 0
        self.class_names: tuple[str, ...] = self.folder.class_names
        self._label_of = {cid: k for k, cid in enumerate(self.folder.category_ids)}
        # only max_size and normalize are read by preprocess
        self._preprocess_cfg = YolactConfig(name="dataset", class_names=self.class_names, max_size=size)
        self._preprocess = preprocess

    def __len__(self) -> int:
        return len(self.folder.images)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before creating each epoch's
        DataLoader iterator; with persistent workers, recreate the loader instead)."""
        self.epoch = int(epoch)

    def load_original(self, index: int) -> dict[str, Any]:
        """Sample ``index`` before any resizing: ``image uint8[H, W, 3]`` BGR,
        ``masks uint8[N, H, W]``, ``boxes float32[N, 4]`` xyxy pixels, ``labels int64[N]``,
        ``crowd bool[N]``, ``image_id``."""
        image_entry = self.folder.images[index]
        anns = self.folder.annotations_by_image[image_entry["id"]]
        image = read_image(self.folder, image_entry)
        h, w = image.shape[:2]
        rles = [segmentation_to_rle(a["segmentation"], h, w) for a in anns]
        xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return {
            "image": image,
            "masks": decode_masks(rles, h, w),
            "boxes": boxes,
            "labels": np.asarray([self._label_of[a["category_id"]] for a in anns], np.int64),
            "crowd": np.asarray([bool(a["iscrowd"]) for a in anns], np.bool_),
            "image_id": int(image_entry["id"]),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} images")
        raw = self.load_original(index)
        image = raw["image"]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, masks, boxes, keep = aug.ssd_augment(image, raw["masks"], raw["boxes"], raw["crowd"], rng, self.size)
        else:  # the image stays original size: preprocess resizes it exactly as at inference
            masks, boxes, keep = aug.resize_targets(raw["masks"], raw["boxes"], image.shape[:2], self.size)
        with torch.no_grad():
            if self._preprocess is None:
                tensor = preprocess(torch.from_numpy(np.ascontiguousarray(image))[None], self._preprocess_cfg)[0]
            else:
                if image.shape[:2] != (self.size, self.size):
                    image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
                tensor = self._preprocess(torch.from_numpy(np.ascontiguousarray(image))[None])[0]
        return {
            "image": tensor,
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)),
            "labels": torch.from_numpy(raw["labels"][keep]),
            "masks": torch.from_numpy(np.ascontiguousarray(masks, np.uint8)),
            "crowd": torch.from_numpy(raw["crowd"][keep]),
            "image_id": raw["image_id"],
            "orig_size": (int(raw["image"].shape[0]), int(raw["image"].shape[1])),
        }


def collate(batch: list[dict[str, Any]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Samples of :class:`CocoInstanceDataset` -> ``(images float32[B, 3, S, S], targets)``,
    ``targets[b]`` being sample ``b`` without its ``image`` (instance counts differ)."""
    if not batch:
        raise ValueError("collate needs at least one sample, got an empty batch")
    images = torch.stack([s["image"] for s in batch])
    targets = [{k: v for k, v in s.items() if k != "image"} for s in batch]
    return images, targets
