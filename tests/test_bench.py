"""``rtseg bench``: what it prints and writes, and how it refuses bad settings.

Behaviour only: every figure is measured for real (real video file, real model, real
ZeroMQ socket), but no test asserts how fast anything is. Tiny frames and frame counts keep
each run to seconds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import cv2
import pytest

from rtseg.bench import STAGES, latency_stats, realtime_models
from rtseg.bench import main as bench_main
from rtseg.models import DEFAULT_MODEL, MODELS
from cli_helpers import assert_one_line_error

BENCH = [sys.executable, "-m", "rtseg.bench"]
TINY = ["--frames", "3", "--warmup", "1", "--sizes", "64x96", "--no-progress"]


def run_bench(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_latency_stats_are_ordered_percentiles():
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["mean"] == pytest.approx(22.0)
    assert s["p50"] == 3.0
    assert s["p50"] <= s["p95"] <= s["p99"] <= 100.0
    assert all(math.isnan(v) for v in latency_stats([]).values())


def test_all_means_the_realtime_variants_of_every_family():
    names = realtime_models()
    assert DEFAULT_MODEL in names
    assert {MODELS[n].family for n in names} == {"yolact", "solov2", "centermask"}
    assert all(max(MODELS[n].input_size) <= 384 for n in names)


def test_table_json_csv_and_plot_agree(tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the dev extra)")
    out_json, out_csv, out_png = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    proc = run_bench(*TINY, "--batch", "1,2", "--json", str(out_json), "--csv", str(out_csv),
                     "--plot", str(out_png))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    report = json.loads(out_json.read_text())
    m = report["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["versions"]["torch"] and "gpu" in m
    assert report["date"] and report["command"].startswith("rtseg bench")
    assert report["settings"]["frames"] == 3 and report["settings"]["sizes"] == [[64, 96]]
    results = report["results"]
    assert [(r["model"], r["backend"], r["batch"]) for r in results] == [(DEFAULT_MODEL, "torch", 1),
                                                                          (DEFAULT_MODEL, "torch", 2)]
    for r in results:
        assert r["skipped"] is None and r["frames"] == 3 and r["frame_size"] == [64, 96]
        assert list(r["stages_ms"]) == list(STAGES)
        for s in [*r["stages_ms"].values(), r["end_to_end_ms"]]:
            assert set(s) == {"mean", "p50", "p95", "p99"}
            assert 0 <= s["p50"] <= s["p95"] <= s["p99"]
        assert r["fps"] > 0
    one, two = results
    # batch 1: FPS is frames over the summed end-to-end times
    assert one["fps"] == pytest.approx(1000 / one["end_to_end_ms"]["mean"], rel=1e-6)
    # the pipeline runs for batch 1 only, on the same number of frames
    assert one["pipeline"]["frames"] == 3 and one["pipeline"]["fps"] > 0
    assert one["pipeline"]["ratio_to_sequential"] == pytest.approx(one["pipeline"]["fps"] / one["fps"])
    assert two["pipeline"] is None

    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["stage"] for row in rows] == [*STAGES, "end to end", "pipeline", *STAGES, "end to end"]
    assert all(row["cpu"] == m["cpu"] and row["cores"] == str(m["cores"]) for row in rows)
    by_stage = {(row["batch"], row["stage"]): row for row in rows}
    for stage in STAGES:
        assert float(by_stage["1", stage]["p95_ms"]) == pytest.approx(one["stages_ms"][stage]["p95"], abs=1e-3)
    assert float(by_stage["2", "end to end"]["fps"]) == pytest.approx(two["fps"], abs=1e-3)

    table = proc.stdout
    assert "p99" in table and "pipe/seq" in table and DEFAULT_MODEL in table
    for stage in STAGES:
        assert stage in table
    assert f"{one['fps']:.1f}" in table

    image = cv2.imread(str(out_png))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 400


def test_onnxruntime_rows_and_skipped_fp16_on_a_cpu(tmp_path):
    pytest.importorskip("onnxruntime")
    out_json = tmp_path / "b.json"
    proc = run_bench(*TINY, "--backends", "torch,onnxruntime", "--precisions", "fp32,fp16", "--no-pipeline",
                     "--json", str(out_json), env={"RTSEG_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out_json.read_text())["results"]
    assert [(r["backend"], r["precision"]) for r in results] == [("torch", "fp32"), ("torch", "fp16"),
                                                                  ("onnxruntime", "fp32"), ("onnxruntime", "fp16")]
    for r in results:
        if r["precision"] == "fp16":
            assert "CUDA" in r["skipped"] and r["stages_ms"] == {}
        else:
            assert r["skipped"] is None and r["fps"] > 0 and r["pipeline"] is None
    assert "skipped: fp16" in proc.stdout


def test_help_through_the_rtseg_command_explains_all():
    proc = subprocess.run([sys.executable, "-m", "rtseg", "bench", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert "--models" in proc.stdout and "real time on a CPU" in proc.stdout and "--plot" in proc.stdout


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--models", "yolact_resnet5"], ["unknown model 'yolact_resnet5'", "all"]),
        (["--backends", "torch,tensorflow"], ["unknown backend 'tensorflow'", "onnxruntime"]),
        (["--precisions", "fp8"], ["unknown precision 'fp8'", "fp16"]),
        (["--sizes", "64by96"], ["--sizes", "'64by96'"]),
        (["--frames", "0"], ["--frames", ">= 1", "got 0"]),
        (["--batch", "two"], ["--batch", "'two'"]),
        (["--warmup", "-1"], ["--warmup", ">= 0"]),
        (["--weights", "yolact_resnet18_half_384"], ["--weights takes MODEL=PATH"]),
        (["--weights", "yolact_resnet18_half_384=/no/such.pth"], ["/no/such.pth", "does not exist"]),
        (["--json", "/no/such/dir/out.json"], ["--json", "does not exist"]),
        (["--device", "tpu"], ["device 'tpu'"]),
        (["--precisions", "fp16"], ["nothing could be measured", "CUDA"]),
    ],
)
def test_bad_settings_are_one_line_errors_with_exit_code_2(args, fragments, capsys):
    code = bench_main([*TINY, *args])  # in-process: the same entry point as python -m rtseg.bench
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess(args, code, captured.out, captured.err), 2, *fragments)


def test_bench_times_the_segmenters_process_batch_what_rtseg_run_runs(tmp_path):
    """The per-case loop calls ``Segmenter.process_batch`` (one call per batch: warm-up and timed
    frames) and nothing else of the segmenter's stages; its stage times are that call's."""
    from tqdm import tqdm

    from rtseg.bench import BenchPlan, CaseResult, measure_case, write_video
    from rtseg.publisher import Publisher
    from rtseg.segmenter import Segmenter

    class Counting(Segmenter):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.batches, self.infers = [], 0

        def process_batch(self, images):
            self.batches.append(len(images))
            return super().process_batch(images)

        def infer(self, batch):
            self.infers += 1
            return super().infer(batch)

    video = str(tmp_path / "v.avi")
    write_video(video, (64, 96), 5)
    plan = BenchPlan(models=[DEFAULT_MODEL], backends=["torch"], sizes=[(64, 96)], precisions=["fp32"], batches=[2],
                     frames=5, warmup=2, device="cpu", threads=None, workers=None, pipeline=False)
    seg = Counting(DEFAULT_MODEL)
    result = CaseResult(model=DEFAULT_MODEL, family=MODELS[DEFAULT_MODEL].family, backend="torch",
                        frame_size=(64, 96), input_size=MODELS[DEFAULT_MODEL].input_size, precision="fp32", batch=2)
    with Publisher("tcp://127.0.0.1:*", seg.class_names) as publisher:
        measure_case(plan, result, seg, video, publisher, tqdm(disable=True))
    assert seg.batches == [2, 2, 2, 1]  # warm-up: 2 frames in one batch; timed: 5 frames as 2 + 2 + 1
    assert seg.infers == len(seg.batches)  # no model call outside process_batch
    assert result.frames == 5 and result.fps > 0
    assert set(result.stages_ms) == set(STAGES) and result.stages_ms["inference"]["mean"] > 0
