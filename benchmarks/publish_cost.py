"""What publishing masks costs per frame: bit-packed windows (rtseg's wire format) vs COCO
RLE vs raw bytes, on the publisher and on the subscriber.

For each frame size and instance count, a frame with that many elliptical masks (objects
of 2-10 % of the image, like the synthetic video's) is:

* encoded: ``bitpacked``: :func:`rtseg.wire.encode_message` (the real message: JSON
  header + one blob of per-instance bit-packed windows); ``rle``: the same header with
  COCO RLE strings (``Instances.to_rle``, pycocotools) instead of a blob; ``raw``: the header
  + ``bool[N, H, W]`` as bytes;
* sent over a real ZeroMQ PUSH/PULL pair on 127.0.0.1 and received (transfer);
* decoded back to ``bool[N, H, W]`` masks: :func:`rtseg.wire.decode_message` (with its
  checks), ``Instances.masks_from_rle``, ``np.frombuffer``.

Median milliseconds of ``--repeats`` runs, message size in KiB. Every decode is checked to
give back the masks exactly.

    python benchmarks/publish_cost.py
    python benchmarks/publish_cost.py --sizes 480x640,1080x1920 --instances 5,20,100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import zmq

from common import ellipse_masks, free_port, hardware

from rtseg.wire import decode_message, encode_message
from rtseg.structures import Frame, Instances

CLASS_NAMES = [f"class{i}" for i in range(80)]


def make_frame(n: int, size: tuple[int, int], seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    h, w = size
    masks, boxes = ellipse_masks(rng, n, size, (0.02, 0.10))
    inst = Instances(boxes=boxes, scores=np.sort(rng.uniform(0.3, 1, n).astype(np.float32))[::-1].copy(),
                     class_ids=rng.integers(0, 80, n).astype(np.int64), masks=masks, image_size=(h, w))
    return Frame(seq=1, source_id="bench", capture_time=time.time(), image=np.zeros((h, w, 3), np.uint8),
                 instances=inst)


def _header(frame: Frame, encoding: str, extra: list | None = None) -> bytes:
    inst = frame.instances
    entries = [{"class_id": int(c), "score": float(s), "box": b.tolist()}
               for c, s, b in zip(inst.class_ids, inst.scores, inst.boxes)]
    if extra is not None:
        for e, x in zip(entries, extra):
            e["rle"] = x
    return json.dumps({"seq": frame.seq, "image_size": list(inst.image_size), "mask_encoding": encoding,
                       "instances": entries}, separators=(",", ":")).encode()


def encoders():
    def bitpacked(frame):
        return encode_message(frame, CLASS_NAMES)

    def rle(frame):
        return [b"rtseg", _header(frame, "coco-rle", frame.instances.to_rle())]

    def raw(frame):
        return [b"rtseg", _header(frame, "raw-bool"), frame.instances.masks_dense().tobytes()]

    return {"bitpacked": bitpacked, "rle": rle, "raw": raw}


def decoders():
    def bitpacked(parts):
        return decode_message(parts).instances.masks_dense()

    def rle(parts):
        head = json.loads(parts[1])
        return Instances.masks_from_rle([e["rle"] for e in head["instances"]], tuple(head["image_size"]))

    def raw(parts):
        head = json.loads(parts[1])
        h, w = head["image_size"]
        return np.frombuffer(parts[2], np.bool_).reshape(len(head["instances"]), h, w)

    return {"bitpacked": bitpacked, "rle": rle, "raw": raw}


def timed(fn, *args, repeats: int):
    out, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args)
        out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="480x640,1080x1920")
    parser.add_argument("--instances", default="5,20,100")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    counts = [int(n) for n in args.instances.split(",")]

    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    port = free_port()
    pull.bind(f"tcp://127.0.0.1:{port}")
    push.connect(f"tcp://127.0.0.1:{port}")

    def transfer(parts):
        push.send_multipart(parts)
        return pull.recv_multipart(copy=False)

    transfer([b"warm-up"])  # the TCP connection is made on the first message
    results = []
    hw = hardware()
    print(f"{hw['cpu']} ({hw['cores']} cores), load average {hw['load_average_1_5_15']}; median of {args.repeats}")
    print(f"{'frame':>10}{'N':>5}  {'encoding':<10}{'encode ms':>10}{'KiB':>9}{'send+recv ms':>13}{'decode ms':>10}"
          f"{'total ms':>9}")
    for size in sizes:
        for n in counts:
            frame = make_frame(n, size)
            for name, enc in encoders().items():
                enc_ms, parts = timed(enc, frame, repeats=args.repeats)
                xfer_ms, received = timed(transfer, parts, repeats=args.repeats)
                received = [bytes(p.buffer) for p in received]
                dec_ms, masks = timed(decoders()[name], received, repeats=args.repeats)
                assert np.array_equal(masks, frame.instances.masks_dense()), f"{name} did not round-trip"
                kib = sum(len(p) for p in parts) / 1024
                row = {"frame": list(size), "instances": n, "encoding": name, "encode_ms": enc_ms, "kib": kib,
                       "transfer_ms": xfer_ms, "decode_ms": dec_ms, "total_ms": enc_ms + xfer_ms + dec_ms}
                results.append(row)
                print(f"{f'{size[0]}x{size[1]}':>10}{n:>5}  {name:<10}{enc_ms:>10.2f}{kib:>9.1f}{xfer_ms:>13.2f}"
                      f"{dec_ms:>10.2f}{row['total_ms']:>9.2f}")
    push.close(0)
    pull.close(0)
    ctx.term()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python benchmarks/publish_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
                       "machine": hw, "repeats": args.repeats, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
