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
  rtseg run --model centermask_lite_vovnet19_quarter_384 --display
      another family's built-in model (SOLOv2's: solov2_light_resnet18_half_384)
"""

SUBSCRIBE_EXAMPLES = """\
examples:
  rtseg subscribe tcp://127.0.0.1:5555
      print one line per frame as it arrives (Ctrl-C to stop)
  rtseg subscribe tcp://127.0.0.1:5555 --count 100 --save out/
      save 100 messages as JSON (COCO RLE masks) in out/
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
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), default="torch",
                   help="inference runtime (default torch; onnxruntime exports the model once into ./engines)")
    p.add_argument("--engine", metavar="FILE",
                   help="with --backend onnxruntime: an .onnx file; with tensorrt: an engine file ('rtseg export')")
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
    run.add_argument("--source", default="synthetic",
                     help="webcam index (0), rtsp:// or http(s):// URL, video file, image, folder of images, "
                          "or 'synthetic' (default)")
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
    run.add_argument("--topic", default="rtseg", help="ZeroMQ topic of published messages (default rtseg)")
    run.add_argument("--record", metavar="FILE", help="write the rendered video to FILE (.mp4 or .avi)")
    run.add_argument("--display", action="store_true", help="show the rendered video in a window")
    run.add_argument("--workers", type=_positive_int,
                     help="inference threads working on different frames (default: 2 on a CPU, 1 on a GPU)")
    run.add_argument("--threads", type=_positive_int, help="torch CPU threads per worker (default: cores / workers)")
    run.add_argument("--open-timeout", type=_positive_float, default=10.0, help="seconds to open the source (default 10)")
    run.add_argument("--read-timeout", type=_positive_float, default=5.0,
                     help="seconds without a frame before a live source is reopened (default 5)")
    run.add_argument("--loop", action="store_true", help="restart a video file or image folder at its end")
    run.add_argument("--summary-json", metavar="FILE", help="also write the end-of-run summary as JSON")
    _add_backend_args(run)
    _add_geometry_args(run)

    subp = sub.add_parser("subscribe", help="receive and print (or save) published results",
                          epilog=SUBSCRIBE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    subp.add_argument("endpoint", help="ZeroMQ endpoint to connect to, e.g. tcp://127.0.0.1:5555")
    subp.add_argument("--topic", default="rtseg", help="topic prefix to subscribe to (default rtseg)")
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
    ev.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: all cores)")
    ev.add_argument("--class-agnostic", action="store_true",
                    help="score with every class merged into one: whether errors lie in the masks or in the classes")
    _add_backend_args(ev)
    _add_geometry_args(ev)

    ex = sub.add_parser("export", help="export a model to ONNX (and build a TensorRT engine from it)")
    ex.add_argument("--model", default=DEFAULT_MODEL)
    ex.add_argument("--weights", help="weights file (default: the built-in weights)")
    ex.add_argument("--format", choices=("onnx", "engine"), default="onnx")
    ex.add_argument("--size", metavar="HxW", help="network input size; must be the model's (see 'rtseg models')")
    batch = ex.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=_positive_int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", metavar="MIN,OPT,MAX",
                       help="symbolic batch dimension; for engines the optimisation profile, e.g. 1,4,8")
    ex.add_argument("--opset", type=int, default=19, help="ONNX opset, 9..20 (default 19: DeformConv)")
    ex.add_argument("--out", help="output .onnx path (default engines/<model>.onnx)")
    ex.add_argument("--half", action="store_true",
                    help="export in float16 (what a --strongly-typed TensorRT engine then runs in)")
    _add_engine_args(ex)

    be = sub.add_parser("build-engine", help="build a TensorRT engine from an 'rtseg export' ONNX file")
    be.add_argument("--onnx", required=True, help="the .onnx file (with its manifest beside it)")
    be.add_argument("--dynamic-batch", metavar="MIN,OPT,MAX", help="optimisation profile for a dynamic-batch ONNX")
    _add_engine_args(be)
    return parser


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16", help="engine precision (default fp16)")
    p.add_argument("--strongly-typed", action="store_true",
                   help="strongly typed network: precision comes from the ONNX (TensorRT 11's only mode)")
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
    from rtseg.evaluate import evaluate, write_eval
    from rtseg.segmenter import configure_threads

    configure_threads(args.threads)
    result = evaluate(args.model, weights=args.weights, data=args.data, device=args.device,
                      max_images=args.max_images, backend=args.backend, engine=args.engine,
                      postprocess=args.postprocess, class_agnostic=args.class_agnostic, canvas=args.canvas,
                      rank_by=args.rank_by)
    print(result.format_table())
    if args.json:
        write_eval(result, args.json)
    return 0


def _batch_profile(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--dynamic-batch takes MIN,OPT,MAX (e.g. 1,4,8), got '{text}'") from None
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"--dynamic-batch needs 1 <= MIN <= OPT <= MAX, got '{text}'")
    return lo, opt, hi


def cmd_export(args: argparse.Namespace) -> int:
    from rtseg.export.onnx_export import export_onnx
    from rtseg.segmenter import Segmenter

    profile = _batch_profile(args.dynamic_batch)
    if args.format == "engine":  # fail before the export when the engine cannot be built here
        from rtseg.export.engine import MachineFacts

        MachineFacts.here()
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
                         opset=args.opset, weights=seg.weights_path, half=args.half,
                         dynamic_hw=seg.geometry_follows_frame)  # issue 16: official keep-ratio variants
    outputs = ", ".join(f"{o['name']}{o['shape']}" for o in result.manifest["outputs"])
    print(f"wrote {result.path} (input {result.manifest['input']['shape']}; outputs {outputs}) and {result.manifest_path}")
    if args.format == "engine":
        args.onnx = result.path
        return cmd_build_engine(args)
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from rtseg.export.engine import BuildSettings, build_engine
    from rtseg.export.onnx_export import read_manifest

    profile = _batch_profile(args.dynamic_batch) or (1, 1, 1)
    settings = BuildSettings(precision="fp32" if args.strongly_typed else args.precision, batch=profile,
                             strongly_typed=args.strongly_typed)
    settings.check()
    preprocess = None
    if args.precision == "int8":
        preprocess = _calibration_preprocess(read_manifest(args.onnx)["model"])
    path = build_engine(args.onnx, args.engine_dir, settings, calibration=args.calibration, preprocess=preprocess,
                        rebuild=args.rebuild)
    print(f"engine {path}")
    return 0


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


def cmd_run(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from rtseg.pipeline import Pipeline
    from rtseg.render import VideoRecorder, Window
    from torch import get_num_threads as torch_threads

    from rtseg.segmenter import Segmenter, configure_threads
    from rtseg.sources import open_source

    curve_keys = None
    if args.curve_keys:  # checked before slow work
        if not args.publish:
            raise ConfigError("--curve-keys is for --publish: expected --publish ENDPOINT with it, found none")
        from rtseg.keys import load_server_keys

        curve_keys = load_server_keys(args.curve_keys)
    workers = args.workers or default_workers(args.device)
    configure_threads(args.threads, workers)
    with ExitStack() as cleanup:
        recorder = None
        if args.record:  # validate paths before slow work
            recorder = VideoRecorder(args.record)
            cleanup.callback(recorder.close)
        segmenter = Segmenter(args.model, weights=args.weights, device=args.device,
                              score_threshold=args.score_threshold, backend=args.backend, engine=args.engine,
                              postprocess=args.postprocess, canvas=args.canvas, rank_by=args.rank_by)
        log.info("model %s (%s) on %s, input %dx%d, %d inference worker(s) x %d torch thread(s)", args.model,
                 segmenter.weights_origin, segmenter.device, *segmenter.input_size, workers, torch_threads())
        segmenter.warmup()
        publisher = None
        if args.publish:
            from rtseg.publish import Publisher

            publisher = Publisher(args.publish, segmenter.class_names, topic=args.topic.encode(), curve_keys=curve_keys)
            cleanup.callback(publisher.close)
        source = open_source(args.source, open_timeout=args.open_timeout, read_timeout=args.read_timeout,
                             loop=args.loop)
        cleanup.callback(source.close)
        source.open()  # fail here, in one line, before any thread starts
        if recorder is not None and getattr(source, "fps", None):
            recorder.fps = float(source.fps)
        window = None
        if args.display:
            window = Window()
            cleanup.callback(window.close)
        pipeline = Pipeline(source, segmenter, publisher=publisher, recorder=recorder, window=window,
                            max_frames=args.max_frames, workers=workers)
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: pipeline.stop("terminated (SIGTERM)"))
            cleanup.callback(signal.signal, signal.SIGTERM, previous)
        summary = pipeline.run()
    print(summary.format())
    if recorder is not None:
        print(f"wrote {recorder.frames_written} frames to {args.record}")
    if args.summary_json:
        from dataclasses import asdict

        with open(args.summary_json, "w") as f:
            json.dump(asdict(summary), f, indent=2)
    return EXIT_INTERRUPTED if summary.stopped_by.startswith("interrupted") else 0


def cmd_subscribe(args: argparse.Namespace) -> int:
    from rtseg.publish import run_subscriber

    return run_subscriber(args.endpoint, topic=args.topic.encode(), count=args.count, timeout=args.timeout,
                          save_dir=args.save, curve_keys=args.curve_keys)


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
                "keys": cmd_keys}
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
