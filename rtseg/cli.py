"""The ``rtseg`` command line: ``run``, ``subscribe``, ``models``.

User errors (missing file, bad URL, wrong checkpoint, unknown model, busy port) end with one
line on stderr and a non-zero exit code (see :mod:`rtseg.errors`); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Sequence

from rtseg.errors import ConfigError, RtsegError

log = logging.getLogger("rtseg")

EXIT_INTERRUPTED = 130


def default_workers(device: str) -> int:
    """Inference workers when --workers is not given: on a CPU two workers of cores/2 torch
    threads each (on 2 cores: 25.6 FPS against 16.8 with one 2-thread worker, see
    BENCHMARKS.md); on a GPU one (the GPU is the shared resource)."""
    if device.startswith("cuda"):
        return 1
    return min(2, os.cpu_count() or 1)

RUN_EXAMPLES = """\
examples:
  rtseg run --max-frames 200 --record demo.mp4
      built-in model on the synthetic video, rendered to demo.mp4
  rtseg run --source video.mp4 --model yolact_resnet50 --weights yolact_resnet50_54_800000.pth \\
            --publish tcp://127.0.0.1:5555
      every frame of a file through the official YOLACT R-50, published over ZeroMQ
  rtseg run --source rtsp://camera.local:8554/stream --display
      newest frame of an RTSP camera, shown in a window (q or Esc quits)
  rtseg run --source 0 --publish tcp://*:5555
      webcam 0, published on all interfaces (reachable from the network)
  rtseg run --source video.mp4 --view 8080
      watch the rendered stream in a browser: http://127.0.0.1:8080/ (this machine only)
  rtseg run --model centermask_lite_vovnet19_quarter_384 --display
      another family's built-in model (SOLOv2's: solov2_light_resnet18_half_384)
"""

SUBSCRIBE_EXAMPLES = """\
examples:
  rtseg subscribe tcp://127.0.0.1:5555
      print one line per frame as it arrives (Ctrl-C to stop)
  rtseg subscribe tcp://127.0.0.1:5555 --count 100 --save out/
      save 100 messages as JSON (COCO RLE masks) in out/<stream>/
  rtseg subscribe tcp://127.0.0.1:5555 --stream cam1
      only the stream named cam1 of a multi-stream run (topic rtseg/cam1, not rtseg/cam10)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _backend_arg(text: str) -> str:
    """--backend: a local runtime's name, or a Triton server's triton://HOST:PORT/MODEL."""
    if text in ("torch", "onnxruntime", "tensorrt") or text.startswith("triton://"):
        return text
    raise argparse.ArgumentTypeError(f"expected torch, onnxruntime, tensorrt or triton://HOST:PORT/MODEL, got '{text}'")


# -- input geometry and score ranking (issue 16) ------------------------------------------------
def _canvas_arg(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 608x1024, got '{text}'") from None
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"expected H and W multiples of 32 (>= 32), got '{text}'")
    return h, w


def _add_geometry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--canvas", metavar="HxW", type=_canvas_arg,
                   help="run every frame at this one input shape (resize capped to fit, padded to it): a speed "
                        "option for fixed-shape engines; official weights then give other detections than upstream "
                        "(default: each model's official resize and padding to 32, once per frame size)")
    p.add_argument("--rank-by", choices=("score", "mask_score"), default="score",
                   help="score: upstream's detection score (default); mask_score: rank, threshold and publish by "
                        "the mask score where the model has one (YOLACT++, CenterMask), as YOLACT++'s demo shows")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", type=_backend_arg, default="torch", metavar="{torch,onnxruntime,tensorrt,triton://HOST:PORT/MODEL}",
                   help="inference runtime (default torch; onnxruntime exports the model once into ./engines; "
                        "triton://HOST:PORT/MODEL: a Triton Inference Server, e.g. one 'rtseg serve' started)")
    p.add_argument("--engine", metavar="FILE",
                   help="with --backend onnxruntime: an .onnx file; with tensorrt: an engine file ('rtseg export')")
    p.add_argument("--cuda-graph", action="store_true",
                   help="with --backend tensorrt: replay inference as a CUDA graph (fixed shapes, less launch overhead)")
    p.add_argument("--postprocess", choices=("torch", "cuda"), default="torch",
                   help="pre/post-processing ops: torch (default, any device) or cuda (rtseg's CUDA kernels in cuda/; "
                        "needs --device cuda and pycuda or CuPy)")


def build_parser() -> argparse.ArgumentParser:
    from rtseg.defaults import DEFAULT_MODEL, DEFAULT_SCORE_THRESHOLD

    parser = argparse.ArgumentParser(prog="rtseg", description="Real-time video instance segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="segment a video source, render and publish the results",
                         epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--source", action="append",
                     help="webcam index (0), rtsp:// or http(s):// URL, video file, image, folder of images, "
                          "or 'synthetic' (default); repeat it for several streams (named 0, 1, ...)")
    run.add_argument("--sources", metavar="FILE",
                     help="several streams: one source per line, optionally followed by a stream name; '#' comments")
    run.add_argument("--batch", type=_positive_int,
                     help="most frames in one model call, at most one per stream (default: streams / workers, "
                          "rounded up, so the workers together take every ready stream once per round; 1 for one source)")
    run.add_argument("--batch-wait-ms", type=float, default=2.0,
                     help="how long a batch waits for more streams to become ready (default 2 ms)")
    run.add_argument("--model", default=DEFAULT_MODEL, help=f"model variant (default {DEFAULT_MODEL}; see 'rtseg models')")
    run.add_argument("--weights", help="weights file (default: the built-in weights of the model, if any)")
    run.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    run.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                     help=f"drop detections scoring at or below this (default {DEFAULT_SCORE_THRESHOLD})")
    run.add_argument("--max-frames", type=_positive_int, help="stop after this many frames")
    run.add_argument("--publish", metavar="ENDPOINT", nargs="?", const="tcp://127.0.0.1:5555",
                     help="publish results on a ZeroMQ PUB socket (alone: tcp://127.0.0.1:5555, this machine only)")
    run.add_argument("--curve-keys", metavar="DIR",
                     help="with --publish: encrypt and admit only the subscribers in DIR/allowed_clients ('rtseg keys generate')")
    run.add_argument("--topic", default="rtseg",
                     help="base ZeroMQ topic: each stream's messages go out on TOPIC/STREAM (default rtseg)")
    run.add_argument("--record", metavar="FILE",
                     help="write the rendered video to FILE: .mp4 / .m4v (fragmented MP4, readable after a crash), "
                          ".avi or .mkv")
    run.add_argument("--display", action="store_true", help="show the rendered video in a window")
    run.add_argument("--view", metavar="[HOST:]PORT",
                     help="serve the rendered streams and their FPS / latency to a browser at http://HOST:PORT/ "
                          "(MJPEG, newest frame only; HOST defaults to 127.0.0.1, this machine only; 0.0.0.0: every "
                          "interface, unauthenticated; PORT 0 picks a free one)")
    run.add_argument("--workers", type=_positive_int,
                     help="inference threads working on different frames (default: 2 on a CPU, 1 on a GPU)")
    run.add_argument("--threads", type=_positive_int, help="torch CPU threads per worker (default: cores / workers)")
    run.add_argument("--open-timeout", type=_positive_float, default=10.0, help="seconds to open the source (default 10)")
    run.add_argument("--read-timeout", type=_positive_float, default=5.0,
                     help="seconds without a frame before a live source is reopened (default 5)")
    run.add_argument("--loop", action="store_true", help="restart a video file or image folder at its end")
    run.add_argument("--reconnect-timeout", type=_positive_float, default=60.0,
                     help="seconds a lost camera or stream is retried before the run ends (exit 3; default 60)")
    run.add_argument("--summary-json", metavar="FILE", help="also write the end-of-run summary as JSON")
    # -- tracking and saved results (rtseg/track.py, rtseg/results.py) --
    run.add_argument("--track", nargs="?", const="bytetrack", metavar="{bytetrack,ocsort,sort}",
                     help="persistent object ids per stream (alone: bytetrack; needs the 'trackers' package)")
    run.add_argument("--save-json", metavar="OUT.jsonl",
                     help="write one JSON line per frame: stream, seq, times, instances (box, score, class, "
                          "track_id, COCO RLE mask)")
    run.add_argument("--save-coco", metavar="OUT.json",
                     help="write COCO results (image_id = seq; category_id = class index + 1); several streams: "
                          "OUT.<stream>.json each")
    run.add_argument("--classes", metavar="NAME,NAME",
                     help="keep only these classes, e.g. person,car (names as the model has them)")
    _add_backend_args(run)
    run.add_argument("--half", action="store_true",
                     help="float16 network on CUDA: torch autocast, an fp16 TensorRT engine, or (onnxruntime) a float16 "
                          "graph from 'rtseg export --half'; post-processing stays float32 (what 'rtseg bench "
                          "--precisions fp16' measures)")
    _add_geometry_args(run)

    subp = sub.add_parser("subscribe", help="receive and print (or save) published results",
                          epilog=SUBSCRIBE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    subp.add_argument("endpoint", help="ZeroMQ endpoint to connect to, e.g. tcp://127.0.0.1:5555")
    subp.add_argument("--topic", default="rtseg", help="topic prefix to subscribe to (default rtseg)")
    subp.add_argument("--stream", metavar="NAME",
                      help="receive only this stream of a multi-stream run (topic TOPIC/NAME exactly; default every stream)")
    subp.add_argument("--count", type=_positive_int, help="exit after this many messages")
    subp.add_argument("--timeout", type=_positive_float, help="exit when no message arrives for this many seconds")
    subp.add_argument("--save", metavar="DIR", help="write each message as JSON (COCO RLE masks) into DIR")
    subp.add_argument("--curve-keys", metavar="DIR", help="CURVE keys for an encrypted publisher (client.key_secret, server.key)")

    keys = sub.add_parser("keys", help="CURVE keys for encrypted publishing").add_subparsers(dest="keys_command", metavar="ACTION")
    keys_gen = keys.add_parser("generate", help="write server and client key pairs (ZeroMQ certificates) into DIR")
    keys_gen.add_argument("dir", help="folder for the keys (created; existing keys are never overwritten)")

    sub.add_parser("models", help="list the model variants, their input sizes and where weights come from")

    from rtseg.bench import add_bench_parser

    add_bench_parser(sub)

    data = sub.add_parser("data", help="make datasets").add_subparsers(dest="data_command", metavar="KIND")
    syn = data.add_parser("synthetic", help="write a COCO-format synthetic shapes set (the classes of the built-in model)")
    syn.add_argument("out", help="output folder (images/ + annotations.json)")
    syn.add_argument("--images", type=_positive_int, required=True, help="number of images")
    syn.add_argument("--seed", type=int, default=0, help="random seed (use different seeds for train / val / test)")
    syn.add_argument("--size", default="384x512", help="HxW of the images (default 384x512)")
    syn.add_argument("--overwrite", action="store_true", help="replace a previous set in OUT")
    syn.add_argument("--workers", type=_positive_int, default=1,
                     help="processes rendering in parallel (same files for any number; default 1)")

    tr = sub.add_parser("train", help="train a model on a COCO-format folder")
    tr.add_argument("--model", default=DEFAULT_MODEL, help=f"model variant (default {DEFAULT_MODEL})")
    tr.add_argument("--data", required=True, help="COCO-format folder (annotations.json + images/)")
    tr.add_argument("--out", required=True, help="folder for checkpoints, log and final weights")
    tr.add_argument("--iterations", type=_positive_int, required=True)
    tr.add_argument("--batch-size", type=_positive_int, default=8)
    tr.add_argument("--lr", type=_positive_float, default=1e-3)
    tr.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    tr.add_argument("--schedule", choices=("step", "cosine"), default="step")
    tr.add_argument("--warmup-iters", type=int, default=500)
    tr.add_argument("--init-weights", help="start from these weights (class layers re-initialised if classes differ)")
    tr.add_argument("--resume", help="continue a run from its checkpoint (e.g. OUT/last.pth)")
    tr.add_argument("--val-data", help="COCO-format folder for a validation loss at each checkpoint")
    tr.add_argument("--checkpoint-every", type=_positive_int, default=500)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: all cores)")
    tr.add_argument("--workers", type=int, default=0,
                    help="data-loading processes (default 0: load in the training process)")

    ev = sub.add_parser("eval", help="COCO mask and box AP (pycocotools) and FPS on a COCO-format folder")
    ev.add_argument("--model", default=DEFAULT_MODEL)
    ev.add_argument("--weights", help="weights file (default: the built-in weights)")
    ev.add_argument("--data", required=True, help="COCO-format folder (annotations.json + images/)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--max-images", type=_positive_int)
    ev.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ev.add_argument("--save-predictions", metavar="FILE",
                    help="also write the predictions as COCO results JSON (the dataset's image and category ids)")
    ev.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: all cores)")
    ev.add_argument("--class-agnostic", action="store_true",
                    help="score with every class merged into one: whether errors lie in the masks or in the classes")
    _add_backend_args(ev)
    _add_geometry_args(ev)

    ex = sub.add_parser("export", help="export a model to ONNX (and build a TensorRT engine from it)")
    ex.add_argument("--model", default=DEFAULT_MODEL)
    ex.add_argument("--weights", help="weights file (default: the built-in weights)")
    ex.add_argument("--format", choices=("onnx", "engine", "triton-repo"), default="onnx",
                    help="onnx (default), engine (TensorRT), or triton-repo: a Triton model repository in DIR")
    # --format triton-repo (rtseg.export.triton_repo): the repository folder and its config.pbtxt settings
    ex.add_argument("repository", nargs="?", metavar="DIR", help="with --format triton-repo: the model repository folder")
    ex.add_argument("--triton-queue-delay-us", type=int, default=None, metavar="US",
                    help="with triton-repo: dynamic_batching max_queue_delay_microseconds (default 2000)")
    ex.add_argument("--triton-instances", type=_positive_int, default=1, metavar="N",
                    help="with triton-repo: model instances (instance_group count, KIND_AUTO; default 1)")
    ex.add_argument("--triton-plan", metavar="ENGINE",
                    help="with triton-repo: serve this TensorRT engine of the model (platform tensorrt_plan) instead of the ONNX")
    ex.add_argument("--size", metavar="HxW", help="network input size; must be the model's (see 'rtseg models')")
    batch = ex.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=_positive_int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", metavar="MIN,OPT,MAX",
                       help="symbolic batch dimension; for engines the optimisation profile, e.g. 1,4,8")
    ex.add_argument("--opset", type=int, default=19, help="ONNX opset, 9..20 (default 19: DeformConv)")
    ex.add_argument("--out", help="output .onnx path (default engines/<model>.onnx)")
    ex.add_argument("--half", action="store_true",
                    help="export in float16 (what a --strongly-typed TensorRT engine then runs in)")
    ex.add_argument("--dcn", choices=("decomposed", "deformconv"), default="decomposed",
                    help="deformable convolution as standard operators (default; every TensorRT parses it) or as "
                         "ONNX DeformConv (ONNX Runtime only)")
    _add_engine_args(ex)

    # rtseg serve (rtseg.serve): a Triton Inference Server for a model, through PyTriton
    sv = sub.add_parser("serve", help="serve a model on a Triton Inference Server (PyTriton) for --backend triton://")
    sv.add_argument("--model", default=DEFAULT_MODEL)
    sv.add_argument("--weights", help="weights file (default: the built-in weights)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    sv.add_argument("--port", type=int, default=8001, help="gRPC port (default 8001)")
    sv.add_argument("--http-port", type=int, help="HTTP port (default: --port + 1)")
    sv.add_argument("--metrics-port", type=int, help="Prometheus metrics port (default: --port + 2)")
    sv.add_argument("--runtime", choices=("onnxruntime", "torch"), default="onnxruntime",
                    help="what runs the network inside the server (default onnxruntime)")
    sv.add_argument("--max-batch", type=_positive_int, default=8, help="dynamic batching: largest batch (default 8)")
    sv.add_argument("--queue-delay-us", type=int, default=2000,
                    help="dynamic batching: microseconds a request may wait for others to join its batch (default 2000)")
    sv.add_argument("--instances", type=_positive_int, default=1, help="model instances run in parallel (default 1)")
    sv.add_argument("--threads", type=_positive_int, help="torch / ONNX Runtime CPU threads (default: all cores)")

    be = sub.add_parser("build-engine", help="build a TensorRT engine from an 'rtseg export' ONNX file")
    be.add_argument("--onnx", required=True, help="the .onnx file (with its manifest beside it)")
    be.add_argument("--dynamic-batch", metavar="MIN,OPT,MAX", help="optimisation profile for a dynamic-batch ONNX")
    be.add_argument("--dynamic-height", metavar="MIN,OPT,MAX", help="optimisation profile for a dynamic-height ONNX")
    be.add_argument("--dynamic-width", metavar="MIN,OPT,MAX", help="optimisation profile for a dynamic-width ONNX")
    _add_engine_args(be)
    return parser


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                   help="engine precision (datacenter TensorRT; default fp16). TensorRT-RTX takes the ONNX's "
                        "(export --half for float16)")
    p.add_argument("--strongly-typed", action="store_true",
                   help="strongly typed network: precision comes from the ONNX (TensorRT 11's and TensorRT-RTX's "
                        "only mode)")
    p.add_argument("--trt-flavour", choices=("tensorrt", "tensorrt-rtx"), default=None,
                   help="TensorRT flavour (default: $RTSEG_TRT_FLAVOUR, else datacenter TensorRT where it is "
                        "installed and a GPU is visible, else TensorRT-RTX, which builds without a GPU)")
    p.add_argument("--gpu-targets", metavar="CC,CC", default=None,
                   help="TensorRT-RTX: compute capabilities to build for (default 8.0,8.6,8.9,12.0)")
    p.add_argument("--calibration", metavar="FOLDER_OR_VIDEO", help="INT8 calibration images or video")
    p.add_argument("--engine-dir", default="engines", help="where engines are cached (default engines/)")
    p.add_argument("--rebuild", action="store_true", help="build even if a matching engine is cached")


def cmd_data(args: argparse.Namespace) -> int:
    from rtseg.data.synthetic_coco import generate_dataset

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size must be HxW, e.g. 384x512, got '{args.size}'") from None
    path = generate_dataset(args.out, images=args.images, seed=args.seed, size=(h, w), overwrite=args.overwrite,
                            progress=True, workers=args.workers)
    print(f"wrote {args.images} images and {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rtseg.segmenter import configure_threads
    from rtseg.train.trainer import train

    configure_threads(args.threads)
    result = train(model=args.model, data=args.data, out=args.out, iterations=args.iterations,
                   batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, schedule=args.schedule,
                   warmup_iters=args.warmup_iters, init_weights=args.init_weights, resume=args.resume,
                   val_data=args.val_data, checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                   workers=args.workers)
    print(f"trained {args.model} to iteration {result.iterations} in {result.seconds / 60:.1f} min; "
          f"final weights {result.final_weights}")
    return result.exit_code


def cmd_eval(args: argparse.Namespace) -> int:
    if args.save_predictions:  # one line before torch's import and the model load
        from rtseg.preflight import check_output_file

        check_output_file("--save-predictions", args.save_predictions)
    from rtseg.evaluate import evaluate, write_eval
    from rtseg.segmenter import configure_threads

    configure_threads(args.threads)
    result = evaluate(args.model, weights=args.weights, data=args.data, device=args.device,
                      max_images=args.max_images, backend=args.backend, engine=args.engine,
                      postprocess=args.postprocess, class_agnostic=args.class_agnostic, canvas=args.canvas,
                      rank_by=args.rank_by, save_predictions=args.save_predictions)
    print(result.format_table())
    if args.json:
        write_eval(result, args.json)
    return 0


def _batch_profile(text: str | None, what: str = "batch") -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--dynamic-{what} takes MIN,OPT,MAX (e.g. 1,4,8), got '{text}'") from None
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"--dynamic-{what} needs 1 <= MIN <= OPT <= MAX, got '{text}'")
    return lo, opt, hi


def cmd_export(args: argparse.Namespace) -> int:
    from rtseg.export.onnx_export import export_onnx
    from rtseg.segmenter import Segmenter

    profile = _batch_profile(args.dynamic_batch)
    if args.format == "triton-repo":
        return _export_triton_repo(args, profile)
    if args.repository is not None:
        raise ConfigError(f"a repository folder is for --format triton-repo, got '{args.repository}' with --format {args.format}")
    if args.format == "engine":  # fail before the export when the engine cannot be built here
        from rtseg.export.engine import MachineFacts

        flavour, _ = _engine_settings(args)
        MachineFacts.here(flavour)
    seg = Segmenter(args.model, weights=args.weights)
    if args.size is not None:
        try:
            size = tuple(int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--size takes HxW, e.g. 384x384, got '{args.size}'") from None
        if size != tuple(seg.input_size):
            h, w = seg.input_size
            raise ConfigError(f"model {args.model} takes {h}x{w} input, got --size {args.size}; the input size is "
                              "part of the variant (anchors, grids): pick a variant with that size ('rtseg models')")
    out = args.out or os.path.join(args.engine_dir, f"{args.model}.onnx")
    result = export_onnx(seg.net, seg.config, out, batch=args.batch, dynamic_batch=profile is not None,
                         opset=args.opset, weights=seg.weights_path, half=args.half, dcn=args.dcn,
                         dynamic_hw=seg.geometry_follows_frame)  # issue 16: official keep-ratio variants
    outputs = ", ".join(f"{o['name']}{o['shape']}" for o in result.manifest["outputs"])
    print(f"wrote {result.path} (input {result.manifest['input']['shape']}; outputs {outputs}) and {result.manifest_path}")
    if result.stage2 is not None:
        print(f"wrote stage 2 {result.stage2.path} (K = {result.stage2.manifest['inputs'][0]['shape'][0]} RoIs, "
              f"at most {result.stage2.manifest['max_k']}) and {result.stage2.manifest_path}")
    if args.format == "engine":
        args.onnx = result.path
        return cmd_build_engine(args)
    return 0


def _export_triton_repo(args: argparse.Namespace, profile: tuple[int, int, int] | None) -> int:
    from rtseg.export.triton_repo import export_triton_repo

    repo = export_triton_repo(args.repository or args.out, args.model, weights=args.weights,
                              max_batch_size=profile[2] if profile else None, queue_delay_us=args.triton_queue_delay_us,
                              instances=args.triton_instances, opset=args.opset, half=args.half,
                              plan_path=args.triton_plan)
    print(f"wrote Triton model repository {os.path.dirname(repo.model_dir) or '.'}: {repo.config_path} "
          f"(platform {repo.platform}), {repo.model_path}, {repo.manifest_path}"
          + (f"; second stage {repo.stage2.config_path} (platform {repo.stage2.platform}), {repo.stage2.model_path}"
             if repo.stage2 is not None else ""))
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from rtseg.export.engine import ensure_engine
    from rtseg.export.onnx_export import read_manifest

    _, settings = _engine_settings(args)
    preprocess = None
    if args.precision == "int8":
        preprocess = _calibration_preprocess(read_manifest(args.onnx)["model"])
    result = ensure_engine(args.onnx, args.engine_dir, settings, calibration=args.calibration, preprocess=preprocess,
                           rebuild=args.rebuild)
    how = f"built in {result.seconds:.1f} s" if result.built else "cached: same ONNX, settings and TensorRT"
    print(f"engine {result.path} ({result.manifest['tensorrt']}, {how}) and {result.path[:-len('.engine')]}.json")
    if result.stage2 is not None:
        how = f"built in {result.stage2.seconds:.1f} s" if result.stage2.built else "cached"
        print(f"stage-2 engine {result.stage2.path} (K {result.stage2.manifest['input']['k']}, {how})")
    return 0


def _engine_settings(args: argparse.Namespace):
    """``(flavour, BuildSettings)`` from the engine options, checked (before any export)."""
    from rtseg.export.engine import BuildSettings
    from rtseg.export.trt_flavour import parse_targets, resolve_flavour

    flavour = resolve_flavour(args.trt_flavour)
    settings = BuildSettings(precision=args.precision, batch=_batch_profile(args.dynamic_batch),
                             height=_batch_profile(getattr(args, "dynamic_height", None), "height"),
                             width=_batch_profile(getattr(args, "dynamic_width", None), "width"),
                             strongly_typed=args.strongly_typed, flavour=flavour.name,
                             gpu_targets=parse_targets(args.gpu_targets))
    settings.check(flavour)
    return flavour, settings


def _calibration_preprocess(model: str):
    """``uint8[H, W, 3]`` BGR -> ``float32[1, 3, h, w]`` numpy, the model's own preprocessing."""
    import torch

    from rtseg.families import family_of
    from rtseg.models import get_config

    cfg = get_config(model)
    family = family_of(cfg)

    def preprocess(image):
        with torch.no_grad():
            return family.preprocess(torch.from_numpy(image)[None], cfg).numpy()

    return preprocess


def cmd_models(_: argparse.Namespace) -> int:
    from rtseg.models import DEFAULT_MODEL, MODELS
    from rtseg.segmenter import builtin_weights_path

    rows = [("name", "family", "input HxW", "classes", "weights")]
    for name, cfg in MODELS.items():
        mark = " (default)" if name == DEFAULT_MODEL else ""
        h, w = cfg.input_size
        source = ("built in (trained on rtseg's synthetic shapes, docs/builtin-model.md)" if builtin_weights_path(name)
                  else cfg.weights_source)
        rows.append((name + mark, cfg.family, f"{h}x{w}", str(len(cfg.class_names)), source))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}")
    return 0


class _StoppedEarly(BaseException):
    """A signal before the pipeline ran (while loading the model, opening the source): unwinds
    ``cmd_run`` to its summary. A BaseException, so that no ``except Exception`` swallows it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _RunSignals:
    """SIGINT and SIGTERM for ``rtseg run``, installed before anything slow (torch's import,
    the model load): the default handlers would end the process by the signal (SIGTERM: no
    summary, no exit 0) or raise KeyboardInterrupt anywhere in the main thread.

    Before the pipeline runs, a signal raises :class:`_StoppedEarly` in the main thread. While
    it runs, the first signal stops it (accepted frames are finished) and any later one
    abandons the frames not yet segmented (:meth:`rtseg.pipeline.Pipeline.abandon`). Once it
    has ended, signals are only counted: the summary is printed, the recording closed."""

    REASONS = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}

    def __init__(self) -> None:
        self.pipeline = None
        self.finishing = False
        self.first: str | None = None
        self.phase = "checking the options"
        self._previous: dict[int, object] = {}

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False  # main() called from a thread: signals stay the caller's business
        for sig in self.REASONS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return True

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: object) -> None:
        reason = self.REASONS[signal.Signals(signum)]
        first = self.first is None
        if first:
            self.first = reason
        if self.finishing:
            return
        if self.pipeline is None:
            self.finishing = True
            raise _StoppedEarly(reason)
        if first:
            self.pipeline.stop(reason)
        else:
            self.pipeline.abandon()


def _check_run_options(args: argparse.Namespace) -> None:
    """Every problem visible from the options alone, as one line, before torch is imported."""
    from rtseg.preflight import (check_device_spelling, check_engine_file, check_half, check_model_name,
                                 check_output_file, check_weights_file)

    check_model_name(args.model)
    check_device_spelling(args.device)
    if getattr(args, "half", False):
        check_half(args.device, args.backend, args.engine)
    if not 0.0 <= args.score_threshold < 1.0:
        raise ConfigError(f"score threshold must be in [0, 1), got {args.score_threshold}")
    if args.engine is not None and args.backend == "torch":
        raise ConfigError("an engine file is for --backend onnxruntime or tensorrt, not torch")
    if args.postprocess == "cuda" and not args.device.startswith("cuda"):
        raise ConfigError(f"--postprocess cuda runs rtseg's CUDA kernels and needs --device cuda[:N], got '{args.device}'")
    if args.weights is not None:
        check_weights_file(args.weights)
    if args.engine is not None and args.backend == "onnxruntime":
        check_engine_file(args.engine, args.backend)
    if args.curve_keys and not args.publish:
        raise ConfigError("--curve-keys is for --publish: expected --publish ENDPOINT with it, found none")
    if args.publish:
        from rtseg.publisher import check_endpoint

        check_endpoint(args.publish, "--publish", bind=True, inproc=False)
    for option, path in (("--record", args.record), ("--summary-json", args.summary_json),
                         ("--save-json", args.save_json), ("--save-coco", args.save_coco)):
        if path:
            check_output_file(option, path)
    if args.view is not None:  # --view: rtseg.view
        from rtseg.view import parse_view_address

        args.view_address = parse_view_address(args.view)
    if args.sources and args.source:
        raise ConfigError("expected --source (repeated) or --sources FILE, found both")
    if not args.batch_wait_ms >= 0:
        raise ConfigError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    from rtseg.preflight import read_sources_file, stream_names

    args.source_entries = (read_sources_file(args.sources) if args.sources
                           else [(spec, None) for spec in (args.source or ["synthetic"])])
    args.stream_names = stream_names(args.source_entries)
    args.source = args.source_entries[0][0]
    _check_track_and_save_options(args)


def _check_track_and_save_options(args: argparse.Namespace) -> None:
    """--track, --classes, --save-coco with several streams: one line, before the model loads."""
    from rtseg.preflight import check_output_file, model_class_names, parse_classes, per_stream_path

    if args.track is not None:
        from rtseg.track import check_tracker

        check_tracker(args.track)
    args.class_ids = (None if args.classes is None
                      else parse_classes(args.classes, model_class_names(args.model), args.model))
    if args.save_coco and len(args.stream_names) > 1:
        for name in args.stream_names:
            check_output_file("--save-coco", per_stream_path(args.save_coco, name))


def cmd_run(args: argparse.Namespace) -> int:
    signals = _RunSignals()
    signals.install()
    try:
        return _run(args, signals)
    finally:
        signals.restore()


def _run(args: argparse.Namespace, signals: _RunSignals) -> int:
    from contextlib import ExitStack

    from rtseg.console import Progress, describe_detections, frames_in_source, where_results_go
    from rtseg.pipeline import Pipeline, Summary
    from rtseg.render import VideoRecorder, Window
    from rtseg.sources import ImageFilesSource, open_source

    recorder = None
    recorders: dict = {}
    saved: list = []  # --save-json / --save-coco writers
    summary = None
    failure: BaseException | None = None
    first = (args.source if isinstance(args.source, str) else (args.source or [args.sources or "synthetic"])[0])
    source_id = first if "@" not in first else "(not opened)"  # the source redacts passwords
    try:
        with ExitStack() as cleanup:
            _check_run_options(args)
            multi = len(args.source_entries) > 1
            recorders = {}
            if args.record:
                from rtseg.preflight import per_stream_path

                for name in args.stream_names:
                    recorders[name] = VideoRecorder(per_stream_path(args.record, name) if multi else args.record)
                    cleanup.callback(recorders[name].close)
                recorder = recorders[args.stream_names[0]]
            curve_keys = None
            if args.curve_keys:
                from rtseg.keys import load_server_keys

                curve_keys = load_server_keys(args.curve_keys)
            view = None
            if args.view is not None:  # --view: bound now, so a busy port is one line before the model loads
                from rtseg.view import ViewServer

                view = ViewServer(args.stream_names, host=args.view_address[0], port=args.view_address[1])
                cleanup.callback(view.close)
            signals.phase = "opening the source"
            sources = []
            for spec, _ in args.source_entries:
                source = open_source(spec, open_timeout=args.open_timeout, read_timeout=args.read_timeout,
                                     loop=args.loop, reconnect_timeout=args.reconnect_timeout)
                cleanup.callback(source.close)
                sources.append(source)
            source = sources[0]
            source_id = ", ".join(s.source_id for s in sources)
            for each in sources:
                each.open()  # fail here, in one line, before the model loads and before any thread starts
            single_image = not multi and isinstance(source, ImageFilesSource) and not os.path.isdir(args.source)
            windows = {}
            if args.display:  # one window per stream, titled with its name
                for name in args.stream_names:
                    windows[name] = Window(f"rtseg {name}") if multi else Window()
                    cleanup.callback(windows[name].close)

            signals.phase = "loading the model"
            log.info("loading model %s", args.model)
            from rtseg.segmenter import Segmenter, configure_threads

            workers = args.workers or default_workers(args.device)
            threads = configure_threads(args.threads, workers)
            segmenter = Segmenter(args.model, weights=args.weights, device=args.device,
                                  score_threshold=args.score_threshold, backend=args.backend, engine=args.engine,
                                  postprocess=args.postprocess, cuda_graph=args.cuda_graph, canvas=args.canvas,
                                  rank_by=args.rank_by, half=args.half)
            log.info("model %s (%s) on %s, input %dx%d, %d inference worker(s) x %d torch thread(s)", args.model,
                     segmenter.weights_origin, segmenter.device, *segmenter.input_size, workers, threads)
            segmenter.warmup()
            publisher = None
            if args.publish:
                from rtseg.publisher import Publisher

                publisher = Publisher(args.publish, segmenter.class_names, topic=args.topic.encode(),
                                      curve_keys=curve_keys)
                cleanup.callback(publisher.close)
            for name, each in zip(args.stream_names, sources):
                if name in recorders and getattr(each, "fps", None):
                    recorders[name].fps = float(each.fps)
            if view is not None:
                view.class_names = list(segmenter.class_names)
                view.start()
            level, text = where_results_go(record=args.record, publish=args.publish, display=args.display,
                                           single_image=single_image, view=view.url if view is not None else None)
            log.log(level, "%s", text)

            progress = None
            total = None if (source.is_live or single_image or multi) else frames_in_source(source)
            if args.max_frames is not None and not single_image and not source.is_live and not multi:
                total = min(total, args.max_frames) if total else args.max_frames
            if not (args.quiet or source.is_live or single_image or multi):
                progress = Progress(total, desc=os.path.basename(source_id.rstrip("/")) or source_id)
                cleanup.callback(progress.close)
                if progress.tty:
                    from tqdm.contrib.logging import logging_redirect_tqdm

                    cleanup.enter_context(logging_redirect_tqdm())

            def on_frame(frame) -> None:
                if progress is not None:
                    progress.update()
                if single_image:
                    name = os.path.basename(args.source)
                    print(describe_detections(name, frame.instances, segmenter.class_names), flush=True)

            saving = _open_result_writers(args, segmenter.class_names, cleanup)
            saved.extend({id(w): w for ws in saving.values() for w in ws}.values())

            def on_frame_and_save(frame) -> None:
                on_frame(frame)
                for writer in saving.get(frame.stream, ()):
                    writer.write(frame)

            tracker = None
            if args.track is not None:
                from rtseg.track import InstanceTracker

                fps_of = {name: getattr(each, "fps", None) for name, each in zip(args.stream_names, sources)}
                tracker = lambda name: InstanceTracker(args.track, frame_rate=float(fps_of[name] or 30.0))  # noqa: E731

            batch = args.batch or -(-len(sources) // workers)
            pipeline = Pipeline(sources, segmenter, names=args.stream_names, publisher=publisher,
                                recorder=recorders or None, window=windows or None, max_frames=args.max_frames,
                                workers=workers, on_frame=on_frame_and_save, batch=batch,
                                batch_wait_ms=args.batch_wait_ms, classes=args.class_ids, tracker=tracker,
                                view=view)
            signals.phase = "running"
            signals.pipeline = pipeline
            try:
                summary = pipeline.run()
            except BaseException as exc:  # noqa: BLE001 - re-raised once the summary is out
                failure, summary = exc, pipeline.result
            signals.finishing = True
    except _StoppedEarly as stop:
        log.warning("%s while %s: nothing was processed", stop.reason.split(" (")[0], signals.phase)
        summary = Summary.nothing(source_id, stop.reason)
    finally:
        signals.finishing = True
    if summary is not None:
        print(summary.format(), flush=True)
        for each in recorders.values():
            if each.frames_written:
                print(f"wrote {each.frames_written} frames to {each.path}")
        for each in saved:
            print(f"wrote {each.frames_written} frames to {each.path}")
        if args.summary_json:
            from dataclasses import asdict

            try:
                with open(args.summary_json, "w") as f:
                    json.dump(asdict(summary), f, indent=2)
            except OSError as exc:
                raise ConfigError(f"--summary-json {args.summary_json}: cannot write it: {exc.strerror}") from None
    if failure is not None:
        raise failure
    stopped_by = signals.first or summary.stopped_by
    return EXIT_INTERRUPTED if stopped_by.startswith("interrupted") else 0


def _open_result_writers(args: argparse.Namespace, class_names, cleanup) -> dict:
    """--save-json (one file, every stream) and --save-coco (one file per stream when there are
    several): stream name -> its writers, closed by ``cleanup``."""
    from rtseg.preflight import per_stream_path
    from rtseg.results import CocoResultsWriter, JsonLinesWriter

    saving: dict = {name: [] for name in args.stream_names}
    if args.save_json:
        writer = JsonLinesWriter(args.save_json, class_names)
        cleanup.callback(writer.close)
        for name in args.stream_names:
            saving[name].append(writer)
    if args.save_coco:
        multi = len(args.stream_names) > 1
        for name in args.stream_names:
            writer = CocoResultsWriter(per_stream_path(args.save_coco, name) if multi else args.save_coco, class_names)
            cleanup.callback(writer.close)
            saving[name].append(writer)
    return saving


def cmd_serve(args: argparse.Namespace) -> int:
    from rtseg.serve import ServeSettings, serve

    return serve(ServeSettings(model=args.model, weights=args.weights, host=args.host, port=args.port,
                               http_port=args.http_port, metrics_port=args.metrics_port, runtime=args.runtime,
                               max_batch_size=args.max_batch, queue_delay_us=args.queue_delay_us,
                               instances=args.instances, threads=args.threads))


def cmd_subscribe(args: argparse.Namespace) -> int:
    from rtseg.publisher import check_endpoint
    from rtseg.subscriber import run_subscriber

    check_endpoint(args.endpoint, "subscribe", bind=False, inproc=False)  # one line, before any socket
    if args.save:  # before connecting and waiting for messages
        from rtseg.preflight import check_output_dir

        check_output_dir("--save", args.save)
    return run_subscriber(args.endpoint, topic=args.topic.encode(), count=args.count, timeout=args.timeout,
                          save_dir=args.save, curve_keys=args.curve_keys, stream=args.stream)


def cmd_keys(args: argparse.Namespace) -> int:
    from rtseg.keys import generate_keys

    for path in generate_keys(args.dir):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        # OpenCV and FFmpeg write their own diagnostics to stderr (e.g. "[tcp @ 0x..] Connection
        # refused" before rtseg's one-line error); rtseg reports what matters itself. Must be set
        # before cv2 first opens a capture.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
        if "cv2" in sys.modules and os.environ["OPENCV_LOG_LEVEL"] == "OFF":
            # OpenCV reads OPENCV_LOG_LEVEL only when cv2 is imported; a program calling main()
            # may have imported it already
            sys.modules["cv2"].utils.logging.setLogLevel(sys.modules["cv2"].utils.logging.LOG_LEVEL_SILENT)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="rtseg: %(levelname)s: %(message)s", stream=sys.stderr)
    from rtseg.bench import cmd_bench

    commands = {"bench": cmd_bench, "run": cmd_run, "subscribe": cmd_subscribe, "models": cmd_models, "data": cmd_data,
                "train": cmd_train, "eval": cmd_eval, "export": cmd_export, "build-engine": cmd_build_engine,
                "keys": cmd_keys, "serve": cmd_serve}
    if args.command == "data" and args.data_command is None:
        parser.parse_args(["data", "--help"])
    if args.command == "keys" and args.keys_command is None:
        parser.parse_args(["keys", "--help"])
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return commands[args.command](args)
    except RtsegError as exc:
        print(f"rtseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rtseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
