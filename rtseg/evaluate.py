"""COCO mask and box AP of a model on a COCO-format folder, plus its speed.

:func:`evaluate` runs :class:`rtseg.segmenter.Segmenter` on every original image (no
augmentation), turns the :class:`~rtseg.structures.Instances` into COCO results and scores
them with pycocotools' ``COCOeval`` for ``segm`` and ``bbox``. :func:`evaluate_predictions`
is the scoring half alone, for results made elsewhere.

Metrics are fractions in ``[0, 1]`` (the table shows them x100, as papers do). COCOeval
reports -1 where a metric has no ground truth (e.g. APs without small objects); rtseg
turns that into ``nan`` (``null`` in JSON). Mask and box results are scored as separate
result sets, as upstream YOLACT's ``eval.py`` does: pycocotools' ``loadRes`` would
otherwise take a result's ``area`` from its box, not its mask, for the size ranges.
Where a family has a box and a mask score (YOLACT++, CenterMask: ``Instances.mask_scores``),
mask AP ranks by the mask score and box AP by the box score, as upstream's evaluations do
(YOLACT ``eval.py`` ``prep_metrics``; centermask2 ``coco_evaluation.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtseg.errors import ConfigError

#: COCOeval.stats indices of the six numbers reported (pycocotools ``summarize``)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_IOU_TYPES = ("segm", "bbox")
_WARMUP_RUNS = 2


# --------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------
def _load_gt(gt: Any):
    """A pycocotools COCO from a COCO object, an annotation JSON path, or a folder."""
    from pycocotools.coco import COCO

    from rtseg.data.coco import load_coco_folder

    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        path = os.fspath(gt)
        if os.path.isdir(path):
            return load_coco_folder(path, check_files=False).to_coco()
        return load_coco_folder(os.path.dirname(path) or ".", path, check_files=False).to_coco()
    raise TypeError(f"ground truth must be a pycocotools COCO, a JSON path or a dataset folder, got {type(gt).__name__}")


def _empty_results(gt) -> Any:
    """A results COCO with no detections (``loadRes`` cannot take an empty list)."""
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def _check_prediction(i: int, p: Any) -> None:
    if not isinstance(p, dict):
        raise ValueError(f"prediction {i} must be a dict, got {type(p).__name__}")
    missing = [k for k in ("image_id", "category_id", "score", "bbox", "segmentation") if k not in p]
    if missing:
        raise ValueError(f"prediction {i} has no {', '.join(repr(k) for k in missing)} "
                         "(each needs image_id, category_id, score, bbox [x, y, w, h], segmentation RLE)")


def evaluate_predictions(gt: Any, predictions: list[dict], *, image_ids: list[int] | None = None) -> dict[str, dict[str, float]]:
    """COCO AP of detections against ground truth.

    Args:
        gt: a pycocotools ``COCO``, the path of an annotation JSON, or a dataset folder.
        predictions: COCO results, one dict per detection with ``image_id``,
            ``category_id`` (the dataset's ids), ``score``, ``bbox`` ``[x, y, w, h]`` in
            pixels and ``segmentation`` (an RLE; ``counts`` str or bytes).
        image_ids: evaluate only these images (default: all images of ``gt``).

    Returns ``{"segm": {"AP": .., "AP50": .., "AP75": .., "APs": .., "APm": .., "APl": ..},
    "bbox": {...}}``: fractions in ``[0, 1]``, ``nan`` where there is no ground truth.
    No predictions gives 0 wherever there is ground truth.
    """
    return _score(gt, predictions, image_ids=image_ids)[0]


def _per_class_ap(ev, coco_gt) -> dict[str, float]:
    """Category name -> AP (IoU 0.50:0.95, all areas, 100 detections) from an accumulated
    COCOeval: its ``eval["precision"]`` is ``[T, R, K, A, M]`` (pycocotools ``cocoeval.py``
    ``accumulate``), -1 where a category has no ground truth (-> nan)."""
    precision = ev.eval["precision"]
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[str(coco_gt.cats[cat]["name"])] = float(p.mean()) if p.size else math.nan
    return out


def _score(gt: Any, predictions: list[dict], *, image_ids: list[int] | None = None
           ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """:func:`evaluate_predictions`, and per-class AP: ``{"segm": {name: AP}, "bbox": {...}}``."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = _load_gt(gt)
    for i, p in enumerate(predictions):
        _check_prediction(i, p)
    known = set(coco_gt.getImgIds())
    ids = sorted(known) if image_ids is None else sorted(int(i) for i in image_ids)
    unknown = sorted({int(p["image_id"]) for p in predictions} - known)
    if unknown:
        raise ValueError(f"predictions refer to image ids not in the ground truth: {unknown[:5]}")
    out: dict[str, dict[str, float]] = {}
    per_class: dict[str, dict[str, float]] = {}
    for iou_type in _IOU_TYPES:
        drop = "bbox" if iou_type == "segm" else "segmentation"
        results = [{k: v for k, v in p.items() if k not in (drop, "mask_score")} for p in predictions]
        if iou_type == "segm":  # a result's optional mask score ranks its mask (upstream's mask AP)
            for r, p in zip(results, predictions):
                r["score"] = p.get("mask_score", p["score"])
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.params.imgIds = ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou_type] = {name: (float(v) if v >= 0 else math.nan) for name, v in zip(METRICS, ev.stats[:6])}
        per_class[iou_type] = _per_class_ap(ev, coco_gt)
    return out, per_class


def merge_classes(dataset: dict, predictions: list[dict]) -> tuple[Any, list[dict]]:
    """Ground truth and predictions with every category merged into one (``object``, the
    first category's id), for class-agnostic scoring: the same masks and boxes, matched
    whatever class they carry. Set beside the usual scores it tells whether a model's errors
    lie in its masks or in its classes. Returns ``(pycocotools COCO, predictions)``; the
    inputs are not changed."""
    from pycocotools.coco import COCO

    if not dataset.get("categories"):
        raise ConfigError("the dataset has no categories to merge")
    one = int(dataset["categories"][0]["id"])
    merged = dict(dataset, categories=[{"id": one, "name": "object"}],
                  annotations=[dict(a, category_id=one) for a in dataset["annotations"]])
    coco = COCO()
    coco.dataset = merged
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, [dict(p, category_id=one) for p in predictions]


# --------------------------------------------------------------------------------------
# running a model
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measured.

    ``segm`` / ``bbox``: metric name (:data:`METRICS`) -> fraction in ``[0, 1]`` or nan.
    ``images_per_s``: images / total seconds in ``Segmenter.process`` (after warm-up;
    excludes image decoding and COCO conversion). ``stage_ms``: mean milliseconds per
    image of ``preprocess``, ``inference``, ``postprocess``.
    """

    model: str
    weights: str
    data: str
    device: str
    images: int
    detections: int
    segm: dict[str, float]
    bbox: dict[str, float]
    images_per_s: float
    stage_ms: dict[str, float] = field(default_factory=dict)
    class_agnostic: bool = False  #: scored with every class merged into one (:func:`merge_classes`)
    #: per-class AP (IoU 0.50:0.95): ``{"segm": {class name: AP}, "bbox": {...}}``, nan without ground truth
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (nan -> None)."""
        def clean(d: dict[str, float]) -> dict[str, float | None]:
            return {k: (None if math.isnan(v) else round(float(v), 6)) for k, v in d.items()}

        return {
            "model": self.model,
            "weights": self.weights,
            "data": self.data,
            "device": self.device,
            "images": self.images,
            "detections": self.detections,
            "segm": clean(self.segm),
            "bbox": clean(self.bbox),
            "images_per_s": round(self.images_per_s, 3),
            "stage_ms": {k: round(v, 3) for k, v in self.stage_ms.items()},
            "class_agnostic": self.class_agnostic,
            "per_class": {k: clean(v) for k, v in self.per_class.items()},
        }

    def format_table(self) -> str:
        """A markdown table of the metrics (x100) and a speed line."""
        def cell(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{100 * v:.1f}"

        name = f"{self.model} (class-agnostic)" if self.class_agnostic else self.model
        lines = [
            f"| {name} | " + " | ".join(METRICS) + " |",
            "|---|" + "---:|" * len(METRICS),
            "| mask | " + " | ".join(cell(self.segm[m]) for m in METRICS) + " |",
            "| box | " + " | ".join(cell(self.bbox[m]) for m in METRICS) + " |",
            "",
        ]
        if self.per_class.get("segm"):
            lines += ["| class | mask AP | box AP |", "|---|---:|---:|"]
            lines += [f"| {name} | {cell(ap)} | {cell(self.per_class.get('bbox', {}).get(name, math.nan))} |"
                      for name, ap in self.per_class["segm"].items()]
            lines.append("")
        lines += [
            f"{self.images} images on {self.device}: {self.images_per_s:.2f} images/s "
            f"(preprocess {self.stage_ms.get('preprocess', math.nan):.1f} ms, "
            f"inference {self.stage_ms.get('inference', math.nan):.1f} ms, "
            f"postprocess {self.stage_ms.get('postprocess', math.nan):.1f} ms per image); weights: {self.weights}",
        ]
        return "\n".join(lines)


def write_eval(result: EvalResult, json_path: str) -> str:
    """Write ``result.to_json()`` to ``json_path`` (parent folders created); returns the path."""
    parent = os.path.dirname(os.path.abspath(json_path))
    os.makedirs(parent, exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(result.to_json(), f, indent=2)
        f.write("\n")
    return json_path


def category_mapping(model_classes: tuple[str, ...], categories: tuple[dict, ...]) -> dict[int, int]:
    """Model class index -> dataset category id, matching names exactly.

    Every dataset category must be one of the model's classes (else :class:`ConfigError`
    listing both); model classes the dataset lacks get no id and their detections are
    dropped (COCOeval would ignore them anyway).
    """
    names = {str(c["name"]): int(c["id"]) for c in categories}
    missing = [n for n in names if n not in model_classes]
    if missing:
        raise ConfigError(f"dataset categories {list(names)} do not match the model's classes {list(model_classes)} "
                          f"(not in the model: {missing})")
    return {k: names[n] for k, n in enumerate(model_classes) if n in names}


def instances_to_results(instances, image_id: int, category_of: dict[int, int]) -> list[dict]:
    """:class:`~rtseg.structures.Instances` of one image -> COCO result dicts (both
    ``bbox`` ``[x, y, w, h]`` and ``segmentation`` RLE); unmapped classes dropped."""
    rles = instances.to_rle()
    out = []
    mask_scores = instances.mask_scores
    for i, (box, score, cls, rle) in enumerate(zip(instances.boxes, instances.scores, instances.class_ids, rles)):
        cat = category_of.get(int(cls))
        if cat is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        out.append({"image_id": image_id, "category_id": cat, "score": float(score),
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": rle})
        if mask_scores is not None:
            out[-1]["mask_score"] = float(mask_scores[i])
    return out


def evaluate(model: str, *, weights: str | None, data: str, device: str = "cpu", score_threshold: float = 0.0,
             max_images: int | None = None, progress: bool = True, ann_file: str | None = None,
             images_dir: str | None = None, backend: str = "torch", engine: str | None = None,
             postprocess: str = "torch", class_agnostic: bool = False, canvas: tuple[int, int] | None = None,
             rank_by: str = "score", save_predictions: str | None = None) -> EvalResult:
    """COCO AP and speed of ``model`` on the COCO-format folder ``data``.

    Args:
        model: a variant name (``rtseg models``).
        weights: a weights file, or ``None`` for the built-in weights (random init with a
            warning when the model has none).
        data: dataset folder (``annotations.json`` + ``images/``, see :mod:`rtseg.data.coco`).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        score_threshold: detections scoring ``<=`` this are dropped before scoring (the
            model's own ``nms_conf_thresh`` applies regardless).
        max_images: evaluate the first ``max_images`` images by id (default all); AP is
            computed over those images only.
        progress: a line on stderr every 10% of images.
        ann_file, images_dir: as for :class:`rtseg.data.coco.CocoInstanceDataset`.
        backend, engine: as for :class:`rtseg.segmenter.Segmenter`.
        class_agnostic: score with every class merged into one (:func:`merge_classes`).
        canvas, rank_by: as for :class:`rtseg.segmenter.Segmenter`.
        save_predictions: also write the predictions scored, COCO results format (a JSON list
            of ``image_id``, ``category_id`` (the dataset's), ``score``, ``bbox``,
            ``segmentation`` RLE, ``mask_score`` where the family has one), to this path.
    """
    from rtseg.data.coco import load_coco_folder, read_image
    from rtseg.segmenter import Segmenter

    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ConfigError(f"max images must be a positive integer, got {max_images!r}")
    folder = load_coco_folder(data, ann_file, images_dir=images_dir)
    segmenter = Segmenter(model, weights=weights, device=device, score_threshold=score_threshold, backend=backend,
                          engine=engine, postprocess=postprocess, canvas=canvas, rank_by=rank_by)
    category_of = category_mapping(segmenter.class_names, folder.categories)
    images = folder.images if max_images is None else folder.images[:max_images]
    if not images:
        raise ConfigError(f"dataset '{data}' has no images to evaluate")

    segmenter.warmup(_WARMUP_RUNS)
    predictions: list[dict] = []
    stage_totals = np.zeros(3)
    step = max(1, len(images) // 10)
    for n, entry in enumerate(images, start=1):
        image = read_image(folder, entry)
        instances, times = segmenter.process(image)
        stage_totals += (times.preprocess, times.inference, times.postprocess)
        predictions.extend(instances_to_results(instances, int(entry["id"]), category_of))
        if progress and (n % step == 0 or n == len(images)):
            print(f"evaluated {n}/{len(images)} images", file=sys.stderr, flush=True)
    if progress:
        print("scoring with COCOeval (segm, bbox)", file=sys.stderr, flush=True)
    gt, predictions = merge_classes(folder.dataset, predictions) if class_agnostic else (folder.to_coco(), predictions)
    if save_predictions:
        write_predictions(predictions, save_predictions)
    metrics, per_class = _score(gt, predictions, image_ids=[int(e["id"]) for e in images])
    total = float(stage_totals.sum())
    return EvalResult(
        model=model,
        weights=segmenter.weights_origin,
        data=data,
        device=str(segmenter.device),
        images=len(images),
        detections=len(predictions),
        segm=metrics["segm"],
        bbox=metrics["bbox"],
        images_per_s=len(images) / total if total > 0 else math.nan,
        stage_ms={name: 1000.0 * float(t) / len(images) for name, t in zip(("preprocess", "inference", "postprocess"), stage_totals)},
        class_agnostic=class_agnostic,
        per_class=per_class,
    )


def write_predictions(predictions: list[dict], path: str) -> str:
    """COCO results (``rtseg eval --save-predictions``) as one JSON list; returns the path."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(predictions, f)
            f.write("\n")
    except OSError as exc:
        raise ConfigError(f"--save-predictions {path}: cannot write it: {exc.strerror}") from None
    return path
