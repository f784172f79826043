"""What compact masks save per frame: full-size ``bool[N, H, W]`` masks on the host (before
issue 17 item 4) vs :class:`rtseg.structures.CompactMasks` made where post-processing ran.

For each frame size, ``N`` masks shaped like objects (filled ellipses, each covering a random
1-10 % of the frame, inside a box at a random place) as post-processing leaves them: a
``bool[N, H, W]`` torch tensor on the compute device (here the CPU). Both paths are timed in
the same run, interleaved, on the same masks:

* **before** (the code as it was, reproduced here): ``to_numpy_instances`` copied the dense
  tensor to the host (``bool[N, H, W]``, ``N * H * W`` bytes); ``encode_message`` then found
  each mask's window (``mask_windows``: row and column reductions over every pixel) and
  bit-packed it; render composited all ``N * H * W`` pixels and blended the covered ones.
* **after**: ``to_numpy_instances`` packs on the device (:func:`rtseg.postprocess.pack_masks`;
  on a GPU ``encode_masks_cuda``), only the compact bytes reach the host; ``encode_message``
  writes the windows and bits as they are; render paints inside each window, then blends the
  windows' bounding rectangle at once.

Measured: bytes per frame held on the host (and, on a GPU, what crosses to it), time of
post-processing-to-host, publish-encode, and their sum, and render; the messages of both paths
are asserted byte-identical and the rendered frames pixel-identical. On the CPU the dense
tensor already lives in host memory, so "before"'s to-host is a view (no copy): the CPU figures
understate what a GPU's 207 MB device-to-host copy per 1080p frame costs.

    PYTHONPATH=. python benchmarks/compact_masks.py --repeats 7 --json benchmarks/results/compact_masks_2026-12-02.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from common import ellipse_masks, hardware

from rtseg.postprocess import to_numpy_instances
from rtseg.render import MASK_ALPHA, PALETTE_BGR, render
from rtseg.structures import CompactMasks, Frame, Instances

from rtseg.wire import encode_message

CLASS_NAMES = [f"class{i}" for i in range(80)]
SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}


def make_result(n: int, size: tuple[int, int], seed: int) -> SimpleNamespace:
    """What a family's post-processing returns, masks ``bool[N, H, W]`` still a tensor."""
    rng = np.random.default_rng(seed)
    masks, boxes = ellipse_masks(rng, n, size, (0.01, 0.10))
    scores = np.sort(rng.uniform(0.3, 1, n).astype(np.float32))[::-1].copy()
    return SimpleNamespace(boxes=torch.from_numpy(boxes), scores=torch.from_numpy(scores),
                           class_ids=torch.from_numpy(rng.integers(0, 80, n).astype(np.int64)),
                           masks=torch.from_numpy(masks))


# -- before: the dense path as it was ------------------------------------------------------------
def before_to_host(result: SimpleNamespace) -> SimpleNamespace:
    """The old ``to_numpy_instances``: every field to the host, masks as ``bool[N, H, W]``."""
    return SimpleNamespace(boxes=result.boxes.detach().cpu().numpy(), scores=result.scores.detach().cpu().numpy(),
                           class_ids=result.class_ids.detach().cpu().numpy(),
                           masks=np.ascontiguousarray(result.masks.detach().cpu().numpy()))


def before_mask_windows(masks: np.ndarray) -> np.ndarray:
    """The old ``rtseg.publish.mask_windows``: row and column reductions over every pixel."""
    n, h, w = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    windows = np.stack([cols.argmax(axis=1), rows.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1),
                        h - rows[:, ::-1].argmax(axis=1)], axis=1).astype(np.int32)
    windows[~rows.any(axis=1)] = 0
    return windows


def before_encode(dense: SimpleNamespace, frame: Frame, size: tuple[int, int]) -> list[bytes]:
    """The old ``encode_message``: windows of the dense masks, ``packbits`` of each window,
    then the header (written by today's ``encode_message``, the same bytes)."""
    windows = before_mask_windows(dense.masks)
    chunks = [np.packbits(dense.masks[i, y0:y1, x0:x1]) for i, (x0, y0, x1, y1) in enumerate(windows.tolist())]
    lengths = np.array([c.size for c in chunks], np.int64)
    masks = CompactMasks(windows, np.cumsum(lengths) - lengths, np.concatenate(chunks), size)
    frame.instances = Instances(boxes=dense.boxes, scores=dense.scores, class_ids=dense.class_ids, masks=masks,
                                image_size=size)
    return encode_message(frame, CLASS_NAMES, publish_time=0.0)


def before_render(image: np.ndarray, dense: SimpleNamespace) -> np.ndarray:
    """The old render's mask compositing over ``N * H * W`` (boxes and labels: unchanged code)."""
    out = image.copy()
    order = np.argsort(-dense.scores, kind="stable")
    masks = dense.masks[order]
    covered = masks.any(axis=0)
    owner = order[masks.argmax(axis=0)]
    blend = PALETTE_BGR[dense.class_ids % len(PALETTE_BGR)][owner[covered]].astype(np.float32)
    out[covered] = (out[covered].astype(np.float32) * (1 - MASK_ALPHA) + blend * MASK_ALPHA).astype(np.uint8)
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1000.0, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median reported), after one warm-up")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.sizes:
        size = SIZES[name]
        result = make_result(args.instances, size, seed=17)
        image = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
        frame = Frame(seq=1, source_id="bench", capture_time=0.0, image=image)
        t: dict[str, list[float]] = {k: [] for k in ("b_host", "b_encode", "b_render", "a_host", "a_encode", "a_render")}
        for rep in range(args.repeats + 1):
            ms_bh, dense = timed(before_to_host, result)
            ms_be, parts_before = timed(before_encode, dense, frame, size)
            ms_br, drawn_before = timed(before_render, image, dense)
            ms_ah, inst = timed(to_numpy_instances, result, size)
            frame.instances = inst
            ms_ae, parts_after = timed(encode_message, frame, CLASS_NAMES, publish_time=0.0)
            ms_ar, drawn_after = timed(render, image, inst, CLASS_NAMES, draw_boxes=False, draw_labels=False)
            assert parts_after == parts_before, "the two paths must publish the same message"
            assert np.array_equal(drawn_after, drawn_before), "the two paths must draw the same pixels"
            if rep:  # the first is a warm-up
                for v, val in zip(t.values(), (ms_bh, ms_be, ms_br, ms_ah, ms_ae, ms_ar)):
                    v.append(val)
            del dense
        med = {k: statistics.median(v) for k, v in t.items()}
        row = {"size": name, "image_size": list(size), "instances": args.instances,
               "dense_bytes": int(args.instances * size[0] * size[1]), "compact_bytes": inst.masks.nbytes,
               "message_bytes": sum(len(p) for p in parts_after), **{f"{k}_ms": round(v, 3) for k, v in med.items()},
               "raw_ms": t}
        rows.append(row)
        print(f"{name} N={args.instances}: dense {row['dense_bytes'] / 1e6:.1f} MB, compact {row['compact_bytes'] / 1e6:.2f} MB "
              f"({row['dense_bytes'] / row['compact_bytes']:.0f}x); to-host+encode before {med['b_host'] + med['b_encode']:.1f} ms "
              f"(host {med['b_host']:.2f}, encode {med['b_encode']:.1f}), after {med['a_host'] + med['a_encode']:.1f} ms "
              f"(host {med['a_host']:.1f}, encode {med['a_encode']:.2f}); render masks before {med['b_render']:.1f} ms, "
              f"after {med['a_render']:.1f} ms", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": hardware(), "command": " ".join(sys.argv), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
