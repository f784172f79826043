"""ONNX Runtime's cost of deformable convolution as standard operators (GridSample + MatMul,
``rtseg export --dcn decomposed``, what every TensorRT parses) against ONNX ``DeformConv``
(``--dcn deformconv``), on the CPU provider.

    python benchmarks/deform_conv.py [--runs 20] [--threads 2] [--full] [--json out.json]

Rows: single DCNv2 layers at the shapes of YOLACT++ R-50's deformable 3x3 convolutions at
550x550 (C3: 128 ch at 69x69, C4: 256 at 35x35, C5: 512 at 18x18), and whole networks:
YOLACT++'s DCN layout at a quarter of its width at 256x256 (``--full``: yolact_plus_resnet50
itself at 550x550). Each row also checks the two forms agree (max |difference|).
Median of ``--runs`` runs after 3 warm-up runs, one process, both forms interleaved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from common import hardware  # noqa: E402

from rtseg.export.deform_conv_onnx import deform_conv_export  # noqa: E402


def _session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def _time(sessions: dict, feed: dict, runs: int) -> dict[str, float]:
    times = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _export_layer(layer: nn.Module, x: torch.Tensor, path: str, mode: str) -> None:
    from rtseg.export.onnx_export import _register_deform_conv

    if mode == "deformconv":
        _register_deform_conv()
    with deform_conv_export(layer, mode):
        torch.onnx.export(layer, (x,), path, input_names=["x"], opset_version=19, dynamo=False)


def layer_rows(runs: int, threads: int, folder: str) -> list[dict]:
    from rtseg.models.resnet import ModulatedDeformConv2d

    rows = []
    for name, c, size in (("C3 DCNv2 128ch 69x69", 128, 69), ("C4 DCNv2 256ch 35x35", 256, 35),
                          ("C5 DCNv2 512ch 18x18", 512, 18)):
        torch.manual_seed(0)
        layer = ModulatedDeformConv2d(c, c).eval()
        nn.init.normal_(layer.conv_offset_mask.weight, std=0.01)
        x = torch.randn(1, c, size, size)
        sessions = {}
        for mode in ("deformconv", "decomposed"):
            path = os.path.join(folder, f"{c}-{mode}.onnx")
            _export_layer(layer, x, path, mode)
            sessions[mode] = _session(path, threads)
        rows.append(_row(name, sessions, {"x": x.numpy()}, runs))
    return rows


def network_rows(runs: int, threads: int, folder: str, full: bool) -> list[dict]:
    from rtseg.export.onnx_export import export_onnx
    from rtseg.models import MODELS
    from rtseg.families.yolact.network import Yolact

    rows = []
    cfgs = [("YOLACT++ DCN layout, 1/4 width, 256x256",
             dataclasses.replace(MODELS["yolact_plus_resnet50"], max_size=256, backbone_width=0.25, fpn_features=32,
                                 proto_channels=32))]
    if full:
        cfgs.append(("yolact_plus_resnet50, 550x550", MODELS["yolact_plus_resnet50"]))
    for name, cfg in cfgs:
        torch.manual_seed(0)
        net = Yolact(cfg).eval()
        for m in net.modules():
            if hasattr(m, "conv_offset_mask"):
                nn.init.normal_(m.conv_offset_mask.weight, std=0.01)
        sessions = {}
        for mode in ("deformconv", "decomposed"):
            path = os.path.join(folder, f"{cfg.name}-{cfg.max_size}-{mode}.onnx")
            export_onnx(net, cfg, path, dcn=mode)
            sessions[mode] = _session(path, threads)
        h, w = cfg.input_size
        rows.append(_row(name, sessions, {"images": np.random.default_rng(0).standard_normal((1, 3, h, w), np.float32)},
                         runs))
    return rows


def _row(name: str, sessions: dict, feed: dict, runs: int) -> dict:
    ms = _time(sessions, feed, runs)
    outs = {k: s.run(None, feed) for k, s in sessions.items()}
    diff = max(float(np.abs(a - b).max()) for a, b in zip(outs["deformconv"], outs["decomposed"]))
    row = {"case": name, "deformconv_ms": round(ms["deformconv"], 2), "decomposed_ms": round(ms["decomposed"], 2),
           "decomposed_over_deformconv": round(ms["decomposed"] / ms["deformconv"], 2), "max_abs_diff": diff}
    print(f"{name:42s} DeformConv {row['deformconv_ms']:8.2f} ms  decomposed {row['decomposed_ms']:8.2f} ms  "
          f"ratio {row['decomposed_over_deformconv']:.2f}  max|diff| {diff:.1e}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="also yolact_plus_resnet50 at 550x550 (slow to export)")
    ap.add_argument("--json", help="write the rows and the machine here")
    args = ap.parse_args()
    import onnxruntime

    print(f"ONNX Runtime {onnxruntime.__version__}, CPU provider, {args.threads} thread(s), median of {args.runs}")
    with tempfile.TemporaryDirectory() as folder:
        rows = layer_rows(args.runs, args.threads, folder) + network_rows(args.runs, args.threads, folder, args.full)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "deform_conv", "runs": args.runs, "threads": args.threads,
                       "onnxruntime": onnxruntime.__version__, "machine": hardware(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
