"""COCO evaluation: scoring known predictions, and the end-to-end run of a model."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rtseg.data.coco import load_coco_folder
from rtseg.data.synthetic_coco import generate_dataset
from rtseg.errors import ConfigError
from rtseg.evaluate import (METRICS, EvalResult, _score, category_mapping, evaluate, evaluate_predictions,
                            merge_classes, write_eval)
from rtseg.synthetic import CLASS_NAMES

SIZE = (96, 128)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_eval")
    generate_dataset(str(out), images=4, seed=21, size=SIZE, n_objects=(3, 6))
    return str(out)


def _ground_truth_as_predictions(folder_path: str, shift: int = 0) -> list[dict]:
    """Every ground-truth instance as a detection with score 1, optionally moved ``shift``
    pixels right (mask and box)."""
    folder = load_coco_folder(folder_path)
    preds = []
    for ann in folder.dataset["annotations"]:
        seg = ann["segmentation"]
        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
        x, y, w, h = ann["bbox"]
        if shift:
            mask = mask_utils.decode(rle)
            moved = np.zeros_like(mask)
            moved[:, shift:] = mask[:, :-shift]
            rle = mask_utils.encode(np.asfortranarray(moved))
            x += shift
        preds.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0,
                      "bbox": [x, y, w, h], "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return preds


def test_perfect_predictions_score_one(synth_dir):
    metrics = evaluate_predictions(os.path.join(synth_dir, "annotations.json"), _ground_truth_as_predictions(synth_dir))
    for iou_type in ("segm", "bbox"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0) and metrics[iou_type]["AP75"] == pytest.approx(1.0)
        for name in ("APs", "APm", "APl"):  # 1, or nan where no object of that size exists
            assert math.isnan(metrics[iou_type][name]) or metrics[iou_type][name] == pytest.approx(1.0)


def test_shifted_predictions_score_lower(synth_dir):
    shifted = evaluate_predictions(synth_dir, _ground_truth_as_predictions(synth_dir, shift=8))
    for iou_type in ("segm", "bbox"):
        assert 0.0 <= shifted[iou_type]["AP"] < 1.0
        assert shifted[iou_type]["AP75"] < 1.0


def test_no_predictions_score_zero(synth_dir):
    metrics = evaluate_predictions(synth_dir, [])
    for iou_type in ("segm", "bbox"):
        assert metrics[iou_type]["AP"] == 0.0 and metrics[iou_type]["AP50"] == 0.0


def test_evaluate_predictions_restricted_to_some_images(synth_dir):
    preds = [p for p in _ground_truth_as_predictions(synth_dir) if p["image_id"] == 0]
    assert evaluate_predictions(synth_dir, preds, image_ids=[0])["segm"]["AP"] == pytest.approx(1.0)
    assert evaluate_predictions(synth_dir, preds)["segm"]["AP"] < 1.0  # the other images' objects are missed
    with pytest.raises(ValueError):
        evaluate_predictions(synth_dir, [{"image_id": 0}])


def test_per_class_ap_is_one_per_found_class_and_zero_for_a_missed_one(synth_dir):
    folder = load_coco_folder(synth_dir)
    names = {int(c["id"]): c["name"] for c in folder.categories}
    preds = _ground_truth_as_predictions(synth_dir)
    present = sorted({p["category_id"] for p in preds})
    missed = present[0]
    metrics, per_class = _score(synth_dir, [p for p in preds if p["category_id"] != missed])
    for iou_type in ("segm", "bbox"):
        assert set(per_class[iou_type]) == set(names.values())
        assert per_class[iou_type][names[missed]] == pytest.approx(0.0)
        for cid in present[1:]:
            assert per_class[iou_type][names[cid]] == pytest.approx(1.0)
        # COCO's AP is the mean of the per-class APs over the classes with ground truth
        with_gt = [v for v in per_class[iou_type].values() if not math.isnan(v)]
        assert metrics[iou_type]["AP"] == pytest.approx(float(np.mean(with_gt)))


def test_category_mapping_by_name():
    cats = ({"id": 4, "name": "ring"}, {"id": 9, "name": "circle"})
    assert category_mapping(CLASS_NAMES, cats) == {0: 9, 4: 4}
    with pytest.raises(ConfigError) as err:
        category_mapping(CLASS_NAMES, ({"id": 1, "name": "person"},))
    msg = str(err.value)
    assert "\n" not in msg and "person" in msg and "circle" in msg


def test_evaluate_end_to_end_with_a_random_model(synth_dir, tmp_path):
    preds_path = tmp_path / "preds.json"
    result = evaluate("yolact_resnet18_half_384", weights=None, data=synth_dir, max_images=2, progress=False,
                      save_predictions=str(preds_path))
    assert isinstance(result, EvalResult) and result.images == 2
    saved_preds = json.loads(preds_path.read_text())  # the predictions scored, COCO results format
    assert len(saved_preds) == result.detections
    assert evaluate_predictions(synth_dir, saved_preds, image_ids=[0, 1])["segm"] == pytest.approx(result.segm,
                                                                                                  nan_ok=True)
    assert set(result.per_class["segm"]) == set(CLASS_NAMES)
    for metrics in (result.segm, result.bbox):
        assert set(metrics) == set(METRICS)
        for name in ("AP", "AP50", "AP75"):
            assert math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 1.0
        assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in metrics.values())
    assert result.images_per_s > 0 and set(result.stage_ms) == {"preprocess", "inference", "postprocess"}
    table = result.format_table()
    assert "| mask |" in table and "| box |" in table and "images/s" in table
    assert "| class | mask AP | box AP |" in table and "| circle |" in table
    path = write_eval(result, str(tmp_path / "out" / "eval.json"))
    saved = json.loads(open(path).read())
    assert saved["model"] == "yolact_resnet18_half_384" and saved["images"] == 2
    assert set(saved["segm"]) == set(METRICS) and saved == json.loads(json.dumps(result.to_json()))


def test_evaluate_refuses_a_dataset_with_other_classes(tmp_path, synth_dir):
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(os.path.join(synth_dir, "images"), other / "images")
    data = json.loads(open(os.path.join(synth_dir, "annotations.json")).read())
    data["categories"][0]["name"] = "person"
    (other / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        evaluate("yolact_resnet18_half_384", weights=None, data=str(other), progress=False)
    assert "person" in str(err.value) and "circle" in str(err.value)
    with pytest.raises(ConfigError):
        evaluate("yolact_resnet18_half_384", weights=None, data=str(tmp_path / "missing"), progress=False)


def test_class_agnostic_scoring_forgives_wrong_classes_only(synth_dir):
    folder = load_coco_folder(synth_dir)
    ids = [int(c["id"]) for c in folder.categories]
    perfect = _ground_truth_as_predictions(synth_dir)
    # every mask and box exact, every class wrong
    wrong = [dict(p, category_id=ids[(ids.index(p["category_id"]) + 1) % len(ids)]) for p in perfect]
    assert evaluate_predictions(folder.to_coco(), wrong)["segm"]["AP"] == pytest.approx(0.0)
    before = (copy.deepcopy(folder.dataset), copy.deepcopy(wrong))
    gt, merged = merge_classes(folder.dataset, wrong)
    assert evaluate_predictions(gt, merged)["segm"]["AP"] == pytest.approx(1.0)
    assert (folder.dataset, wrong) == before  # the inputs are not changed
    # wrong masks stay wrong
    gt, shifted = merge_classes(folder.dataset, _ground_truth_as_predictions(synth_dir, shift=8))
    assert evaluate_predictions(gt, shifted)["segm"]["AP"] < 0.9


def test_rtseg_eval_class_agnostic(synth_dir, tmp_path):
    from cli_helpers import run_cli

    proc = run_cli("eval", "--data", synth_dir, "--max-images", "2", "--class-agnostic", "--threads", "1",
                   "--json", str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stderr
    assert "| yolact_resnet18_half_384 (class-agnostic) | AP |" in proc.stdout
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["class_agnostic"] is True and result["images"] == 2


def test_rtseg_eval_reports_damaged_ground_truth_in_one_warning_line(tmp_path):
    """A polygon with fewer than 3 points and a box with a negative height in the ground
    truth: `rtseg eval` still scores, and says what it found, with counts, in one line."""
    from cli_helpers import run_cli

    root = tmp_path / "set"
    generate_dataset(str(root), images=1, seed=21, size=SIZE, n_objects=(2, 3))
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    image, cat = data["images"][0]["id"], data["categories"][0]["id"]
    data["annotations"] += [
        {"image_id": image, "category_id": cat, "segmentation": [[5, 5, 40, 40]]},
        {"image_id": image, "category_id": cat, "segmentation": [[50, 10, 90, 10, 90, 50]], "bbox": [50, 50, 40, -40]},
    ]
    path.write_text(json.dumps(data))
    proc = run_cli("eval", "--data", str(root), "--max-images", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "annotations file" in line]
    assert len(lines) == 1 and lines[0].startswith("rtseg: WARNING: "), proc.stderr
    assert "1 polygon part(s) with fewer than 3 points (dropped)" in lines[0]
    assert "1 box(es) with a negative width or height" in lines[0] and "1 annotation(s) whose mask has no pixel" in lines[0]
    assert "| mask |" in proc.stdout
