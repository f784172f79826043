"""Saved results (``rtseg run --save-json``, ``--save-coco``, ``--classes``; ``rtseg eval
--save-predictions``): real runs of the command line, real pycocotools."""

from __future__ import annotations

import json

import pytest

from cli_helpers import assert_one_line_error, run_cli
from rtseg.data.synthetic_coco import generate_dataset
from rtseg.evaluate import evaluate_predictions
from rtseg.structures import Instances
from rtseg.synthetic import CLASS_NAMES



def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_save_json_one_line_per_frame_with_tracks_and_rle_masks(tmp_path):
    pytest.importorskip("trackers", reason="the track extra: pip install 'rtseg[track]' && pip install --no-deps trackers")
    out = tmp_path / "out.jsonl"
    proc = run_cli("run", "--source", "synthetic:0:160x120", "--track", "--save-json", str(out), "--max-frames", "6")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 6 frames to {out}" in proc.stdout
    lines = _lines(out)
    assert [r["seq"] for r in lines] == list(range(6)) and {r["stream"] for r in lines} == {"0"}
    for r in lines:
        assert r["source"] == "synthetic:0:160x120" and r["image_size"] == [120, 160]
        assert isinstance(r["capture_time"], float) and r["end_to_end_ms"] > 0
        for d in r["instances"]:
            assert set(d) == {"class_id", "class_name", "score", "box", "track_id", "mask"}
            assert d["class_name"] == CLASS_NAMES[d["class_id"]] and 0 < d["score"] <= 1
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 160 and 0 <= y1 <= y2 <= 120
            assert d["track_id"] is None or (isinstance(d["track_id"], int) and d["track_id"] >= 0)
            assert d["mask"]["size"] == [120, 160]
        masks = Instances.masks_from_rle([d["mask"] for d in r["instances"]], (120, 160))
        assert masks.shape == (len(r["instances"]), 120, 160)
    # ids are given out once a track is confirmed (2 frames for ByteTrack), then persist
    assert any(d["track_id"] is not None for r in lines[2:] for d in r["instances"])


def test_without_track_the_track_ids_are_null_and_classes_filter_every_stream(tmp_path):
    """Two streams, --classes circle,star: one JSON file naming each line's stream, one COCO
    file per stream (out.<stream>.json, as --record does); only the two classes anywhere."""
    out, coco = tmp_path / "out.jsonl", tmp_path / "out.json"
    proc = run_cli("run", "--source", "synthetic:0:160x120", "--source", "synthetic:1:160x120", "--classes",
                   "circle,star", "--save-json", str(out), "--save-coco", str(coco), "--max-frames", "3")
    assert proc.returncode == 0, proc.stderr
    lines = _lines(out)
    assert sorted((r["stream"], r["seq"]) for r in lines) == [(s, i) for s in ("0", "1") for i in range(3)]
    for stream in ("0", "1"):
        assert [r["seq"] for r in lines if r["stream"] == stream] == [0, 1, 2]  # each stream in its order
    found = [d for r in lines for d in r["instances"]]
    assert found and {d["class_name"] for d in found} <= {"circle", "star"}
    assert all(d["track_id"] is None for d in found)
    assert not coco.exists()
    per_stream = {s: json.loads((tmp_path / f"out.{s}.json").read_text()) for s in ("0", "1")}
    for stream, results in per_stream.items():
        assert {p["image_id"] for p in results} <= {0, 1, 2}
        assert {p["category_name"] for p in results} <= {"circle", "star"}
        assert all(p["category_id"] == CLASS_NAMES.index(p["category_name"]) + 1 for p in results)
        assert len(results) == sum(len(r["instances"]) for r in lines if r["stream"] == stream)


def test_save_coco_scores_like_rtseg_eval(tmp_path):
    """The same model over the same images: pycocotools on --save-coco's file gives the AP
    ``rtseg eval`` reports, and the predictions ``rtseg eval --save-predictions`` writes."""
    data = tmp_path / "data"
    generate_dataset(str(data), images=4, seed=5, size=(192, 256), n_objects=(3, 6))
    coco, preds, ev = tmp_path / "run.json", tmp_path / "eval_preds.json", tmp_path / "eval.json"
    proc = run_cli("run", "--source", str(data / "images"), "--score-threshold", "0", "--save-coco", str(coco))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("eval", "--data", str(data), "--save-predictions", str(preds), "--json", str(ev))
    assert proc.returncode == 0, proc.stderr
    assert "| class | mask AP | box AP |" in proc.stdout and "| circle |" in proc.stdout
    reported = json.loads(ev.read_text())
    from_run = evaluate_predictions(str(data), json.loads(coco.read_text()))
    from_eval = evaluate_predictions(str(data), json.loads(preds.read_text()))
    for iou_type in ("segm", "bbox"):
        assert reported[iou_type]["AP"] > 0.1  # the built-in model finds the shapes
        assert from_run[iou_type]["AP"] == pytest.approx(reported[iou_type]["AP"], abs=1e-6)
        assert from_eval[iou_type]["AP"] == pytest.approx(reported[iou_type]["AP"], abs=1e-6)
    assert len(json.loads(coco.read_text())) == reported["detections"]


@pytest.mark.parametrize("option", ["--save-json", "--save-coco"])
def test_an_unwritable_output_is_one_line_before_the_model_loads(tmp_path, option):
    proc = run_cli("run", option, str(tmp_path / "nodir" / "out.json"), "--max-frames", "1")
    assert_one_line_error(proc, 2, option, "does not exist")
    assert "loading model" not in proc.stderr


def test_bad_classes_are_one_line_naming_the_valid_ones_before_the_model_loads():
    proc = run_cli("run", "--classes", "person,car", "--max-frames", "1")
    assert_one_line_error(proc, 2, "'person', 'car'", "yolact_resnet18_half_384",
                          "valid names: " + ", ".join(CLASS_NAMES))
    assert "loading model" not in proc.stderr
