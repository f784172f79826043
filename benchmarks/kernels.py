"""rtseg's CUDA kernels vs the torch ops they replace (and torchvision's NMS), on one CUDA GPU.

For each op and size: median milliseconds of the CUDA kernel (``rtseg.kernels``), of its torch twin
(``rtseg.postprocess``) and, for greedy NMS, of torchvision's ``batched_nms`` alone, timed with CUDA
events around each call after a warm-up, every implementation given the same inputs and each
repeat round alternating between them so clock drift hits all. The device->host copy each op
makes to size its output is included, as in real use.

    python benchmarks/kernels.py                          # every op at 100 / 1,000 / 10,000 candidates
    python benchmarks/kernels.py --ops fast_nms --sizes 1000 --repeats 200

Results go to ``benchmarks/results/kernels_<date>.json`` (``--out`` to change) and a table on stdout.
Without a CUDA GPU, or without a way to launch the kernels, it says so in one line and exits 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class Workload:
    """One op at one size: a short description and the implementations, each a no-argument
    callable that runs on the GPU (inputs already there)."""

    description: str
    implementations: dict[str, Callable[[], object]]


# -- NMS ops (cuda/fast_nms.cu, cuda/greedy_nms.cu, cuda/matrix_nms.cu) -----------------------------------

def _boxes(g: torch.Generator, n: int, device: torch.device) -> torch.Tensor:
    """Boxes of 8..200 px in a 640 x 640 frame: dense enough that NMS suppresses."""
    xy = torch.rand(n, 2, generator=g) * 600
    wh = 8 + torch.rand(n, 2, generator=g) * 192
    return torch.cat([xy, xy + wh], dim=1).to(device)


def fast_nms_workload(n: int, device: torch.device, g: torch.Generator) -> Workload:
    from rtseg.kernels import nms as knms
    from rtseg.families.yolact.postprocess import fast_nms

    classes = 80  # COCO, as YOLACT; top_k / max_detections are YOLACT's defaults (nms_top_k 200, max_num_detections 100)
    boxes = _boxes(g, n, device)
    scores = torch.rand(classes, n, generator=g).to(device)
    return Workload(f"{n} candidates x {classes} classes, top_k 200, 100 detections", {
        "kernel": lambda: knms.fast_nms(boxes, scores, 0.5, 200, 100),
        "torch": lambda: fast_nms(boxes, scores, 0.5, 200, 100),
    })


def greedy_nms_workload(n: int, device: torch.device, g: torch.Generator) -> Workload:
    from torchvision.ops import batched_nms

    from rtseg.kernels import nms as knms
    from rtseg.families.centermask.postprocess import class_aware_nms

    boxes = _boxes(g, n, device)
    scores = torch.rand(n, generator=g).to(device)
    class_ids = torch.randint(0, 80, (n,), generator=g).to(device)
    # CenterMask's FCOS settings: NMS 0.6, 100 detections (post_nms_topk)
    return Workload(f"{n} candidates, 80 classes, IoU 0.6, top 100", {
        "kernel": lambda: knms.greedy_nms(boxes, scores, class_ids, 0.6, 100),
        "torch": lambda: class_aware_nms(boxes, scores, class_ids, 0.6, 100),
        "torchvision batched_nms": lambda: batched_nms(boxes, scores, class_ids, 0.6)[:100],
    })


def matrix_nms_workload(n: int, device: torch.device, g: torch.Generator) -> Workload:
    from rtseg.kernels import nms as knms
    from rtseg.families.solov2.postprocess import matrix_nms

    h, w = 96, 160  # mask features of a 384 x 640 input at stride 4
    masks = (torch.rand(n, 1, 1, generator=g) > torch.rand(n, h, w, generator=g)).to(device)
    labels = torch.randint(0, 80, (n,), generator=g).to(device)
    scores = torch.rand(n, generator=g).sort(descending=True).values.to(device)
    return Workload(f"{n} masks of {h} x {w}, 80 classes, gaussian", {
        "kernel": lambda: knms.matrix_nms(masks, labels, scores),
        "torch": lambda: matrix_nms(masks, labels, scores),
    })


#: op name -> workload builder ``(size, device, generator) -> Workload``
OPS: dict[str, Callable[[int, torch.device, torch.Generator], Workload]] = {
    "fast_nms": fast_nms_workload,
    "greedy_nms": greedy_nms_workload,
    "matrix_nms": matrix_nms_workload,
}

# -- mask ops (cuda/mask_*.cu, cuda/preprocess.cu: rtseg/kernels/masks.py) ------------------------------
# One entry per frame size. ``size`` (candidates) maps to size // 100 instances for the mask ops
# (1 / 10 / 100 at the default sizes; 100 is YOLACT's max_num_detections and CenterMask's
# post_nms_topk) and to max(1, size // 1000) frames for preprocessing (1 / 1 / 10).

FRAME_SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}


def _instances(size: int) -> int:
    return max(1, size // 100)


def _pixel_boxes(g: torch.Generator, n: int, frame: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Boxes of 5..50 % of the frame side, inside it."""
    h, w = frame
    wh = (0.05 + 0.45 * torch.rand(n, 2, generator=g)) * torch.tensor([w, h])
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    return torch.cat([xy, xy + wh], dim=1).to(device)


def assemble_masks_workload(frame_name: str) -> Callable[[int, torch.device, torch.Generator], Workload]:
    def build(size: int, device: torch.device, g: torch.Generator) -> Workload:
        from rtseg.kernels.masks import assemble_masks_cuda
        from rtseg.families.yolact.postprocess import assemble_masks, masks_to_image

        frame = FRAME_SIZES[frame_name]
        n = _instances(size)
        proto = torch.randn(138, 138, 32, generator=g).to(device)  # YOLACT-550 prototypes
        coef = torch.randn(n, 32, generator=g).to(device)
        boxes = _pixel_boxes(g, n, frame, device) / torch.tensor([frame[1], frame[0]] * 2, device=device)
        return Workload(f"{n} instances, 138 x 138 x 32 prototypes -> {frame[0]} x {frame[1]} masks", {
            "kernel": lambda: assemble_masks_cuda(proto, coef, boxes, frame),
            "torch": lambda: masks_to_image(assemble_masks(proto, coef, boxes), frame),
        })
    return build


def paste_masks_workload(frame_name: str) -> Callable[[int, torch.device, torch.Generator], Workload]:
    def build(size: int, device: torch.device, g: torch.Generator) -> Workload:
        from rtseg.kernels.masks import paste_masks_cuda
        from rtseg.families.centermask.postprocess import paste_masks

        frame = FRAME_SIZES[frame_name]
        n = _instances(size)
        masks = torch.rand(n, 28, 28, generator=g).to(device)  # CenterMask RoI masks (2 x pooler 14)
        boxes = _pixel_boxes(g, n, frame, device)
        return Workload(f"{n} RoI masks 28 x 28 -> {frame[0]} x {frame[1]}", {
            "kernel": lambda: paste_masks_cuda(masks, boxes, frame),
            "torch": lambda: paste_masks(masks, boxes, frame),
        })
    return build


def preprocess_workload(family: str, frame_name: str) -> Callable[[int, torch.device, torch.Generator], Workload]:
    def build(size: int, device: torch.device, g: torch.Generator) -> Workload:
        from rtseg.kernels.masks import preprocess_cuda
        from rtseg.models import MODELS
        from rtseg.families.centermask import preprocess as centermask
        from rtseg.families.yolact import preprocess as yolact

        frame = FRAME_SIZES[frame_name]
        frames = max(1, size // 1000)
        # the shipped configs: YOLACT-550 (plain bilinear), CenterMask-Lite V-39 (antialiased, 600 / 1000)
        name, module = {"yolact": ("yolact_base", yolact), "centermask": ("centermask2_lite_v39", centermask)}[family]
        cfg = MODELS[name]
        images = torch.randint(0, 256, (frames, *frame, 3), generator=g, dtype=torch.uint8).to(device)
        return Workload(f"{frames} BGR frame(s) {frame[0]} x {frame[1]} -> {family} input {tuple(cfg.input_size)}", {
            "kernel": lambda: preprocess_cuda(images, cfg),
            "torch": lambda: module.preprocess(images, cfg),
        })
    return build


def encode_masks_workload(frame_name: str) -> Callable[[int, torch.device, torch.Generator], Workload]:
    def build(size: int, device: torch.device, g: torch.Generator) -> Workload:
        import numpy as np

        from rtseg.kernels.masks import encode_masks_cuda
        from rtseg.structures import dense_windows

        frame = FRAME_SIZES[frame_name]
        n = _instances(size)
        boxes = _pixel_boxes(g, n, frame, torch.device("cpu")).long()
        masks = torch.zeros(n, *frame, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            masks[i, y0:y1, x0:x1] = torch.rand(y1 - y0, x1 - x0, generator=g) < 0.8
        masks = masks.to(device)

        def kernel() -> bytes:
            enc = encode_masks_cuda(masks)
            return enc.blob.cpu().numpy().tobytes()

        def torch_path() -> bytes:  # what the publisher does today: copy N x H x W bools, pack on the CPU
            host = masks.cpu().numpy()
            return b"".join(np.packbits(host[i, y0:y1, x0:x1]).tobytes()
                            for i, (x0, y0, x1, y1) in enumerate(dense_windows(host).tolist()))

        return Workload(f"{n} masks {frame[0]} x {frame[1]} -> bit-packed windows on the host", {
            "kernel": kernel,
            "torch": torch_path,
        })
    return build


for _frame in FRAME_SIZES:
    OPS[f"assemble_masks_{_frame}"] = assemble_masks_workload(_frame)
    OPS[f"paste_masks_{_frame}"] = paste_masks_workload(_frame)
    OPS[f"preprocess_yolact_{_frame}"] = preprocess_workload("yolact", _frame)
    OPS[f"preprocess_centermask_{_frame}"] = preprocess_workload("centermask", _frame)
    OPS[f"encode_masks_{_frame}"] = encode_masks_workload(_frame)


# -- timing ------------------------------------------------------------------------------------------------

def time_workload(workload: Workload, warmup: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per implementation (CUDA events, interleaved rounds)."""
    names = list(workload.implementations)
    for _ in range(warmup):
        for name in names:
            workload.implementations[name]()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            workload.implementations[name]()
            end.record()
            end.synchronize()  # read the clock only after the GPU is done
            times[name].append(start.elapsed_time(end))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from {', '.join(OPS)}")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000], help="candidates per call")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/results/kernels_<date>.json)")
    args = parser.parse_args(argv)

    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        parser.error(f"unknown op(s) {unknown}; known: {', '.join(OPS)}")
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py: no CUDA GPU here, nothing measured (the kernels need an NVIDIA GPU)")
        return 1
    from rtseg import kernels

    device = torch.device("cuda", torch.cuda.current_device())
    if not kernels.kernels_available(device):
        print("benchmarks/kernels.py: the kernels cannot be launched here: install pycuda (pip install 'rtseg[gpu]') "
              "or CuPy, and have nvcc or NVRTC")
        return 1

    g = torch.Generator().manual_seed(0)
    rows = []
    for op in ops:
        for size in args.sizes:
            workload = OPS[op](size, device, g)
            medians = time_workload(workload, args.warmup, args.repeats)
            rows.append({"op": op, "size": size, "workload": workload.description, "median_ms": medians})
            cells = "  ".join(f"{name} {ms:8.3f} ms" for name, ms in medians.items())
            ratio = medians["torch"] / medians["kernel"]
            print(f"{op:>12} {size:>6}  {cells}  torch/kernel {ratio:5.2f}", flush=True)

    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import hardware

        machine = hardware()
    except Exception as err:  # the figures stand without the machine record; say why it is missing
        machine = {"error": f"machine record unavailable: {err}"}
    record = {
        "script": "benchmarks/kernels.py",
        "date": datetime.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name(device),
        "capability": list(torch.cuda.get_device_capability(device)),
        "launcher": kernels.launcher_name(),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "machine": machine,
        "results": rows,
    }
    out = args.out or Path(__file__).resolve().parent / "results" / f"kernels_{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
