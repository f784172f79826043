"""The synchronous core: ``Segmenter(image) -> Instances``, testable without threads.

A segmenter is preprocess -> backend (named head outputs) -> postprocess. The threaded
pipeline (:mod:`rtseg.pipeline`) only wraps it in stages and queues.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from rtseg import device as devices
from rtseg.backends import BACKENDS, TRITON_SCHEME, Backend, TorchBackend
from rtseg.defaults import DEFAULT_SCORE_THRESHOLD
from rtseg.errors import ConfigError, EngineError
from rtseg.families import family_of
from rtseg.families.base import InputGeometry, ModelConfig, Stage2, check_canvas
from rtseg.models import DEFAULT_MODEL, get_config
from rtseg.models.checkpoint import load_weights
from rtseg.postprocess import TORCH_OPS, PostprocessOps, cuda_ops
from rtseg.postprocess.resize import host_twin
from rtseg.structures import Instances

log = logging.getLogger("rtseg.segmenter")


def builtin_weights_path(model_name: str) -> str | None:
    """Path of the weights shipped in the package for ``model_name``, if there are any."""
    candidate = resources.files("rtseg") / "weights" / f"{model_name}.pth"
    return str(candidate) if candidate.is_file() else None


def parse_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> :class:`torch.device`, or :class:`ConfigError`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device '{device}', expected 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' requested but no CUDA GPU is available to torch; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device '{device}', expected 'cpu', 'cuda' or 'cuda:N'")
    return dev


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent per stage for one call, from :func:`rtseg.device.stage_clock`: the host
    clock on a CPU; on CUDA, events on the worker's stream read after the results reached the
    host (nothing synchronises the device to take a time). The three add up to the call's
    wall time."""

    preprocess: float
    inference: float
    postprocess: float


class Segmenter:
    """Instance segmentation of single BGR images with one model.

    Args:
        model: a variant name from ``rtseg models``.
        weights: a weights file; ``None`` uses the built-in weights when the package ships
            them for this model, else a seeded random initialisation (with a warning).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        score_threshold: detections scoring ``<=`` this are dropped.
        backend: ``"torch"``, ``"onnxruntime"``, ``"tensorrt"`` or ``"triton://HOST:PORT/MODEL"``
            (:mod:`rtseg.backends`).
        engine: for ``onnxruntime`` an ``.onnx`` file, for ``tensorrt`` an engine file, each
            with the manifest ``rtseg export`` writes beside it. ``None`` with
            ``onnxruntime``: export the model (with these weights) once into ``cache_dir``
            and reuse that file while model, weights, opset and versions stay the same.
        cache_dir: where automatic exports go (default ``$RTSEG_CACHE`` or ``./engines``).
        postprocess: ``"torch"`` (torch ops on the model's device) or ``"cuda"``: rtseg's CUDA
            kernels (``cuda/``, :mod:`rtseg.kernels`) for preprocessing, NMS and mask assembly
            / pasting; needs a CUDA device, pycuda (the ``gpu`` extra) or CuPy, and nvcc or NVRTC.
        canvas: ``(H, W)``, multiples of 32: run every frame at this one input shape (resize
            capped to fit, zero padding to it) instead of the official per-frame-size geometry.
            A speed option (one shape for engines and caches); for official weights it changes
            the detections (see README "Exactness"). ``None`` (default): the family's official
            test geometry, computed once per frame size (a stream has one).
        rank_by: ``"score"`` (default): ``Instances.scores`` is upstream's detection score and
            the threshold applies to it; ``"mask_score"``: where the family has a mask score
            (YOLACT++, CenterMask) rank and threshold by it and publish it as the score, as
            YOLACT++'s official demo displays (:meth:`Instances.ranked_by_mask_score`).
        half: run the network in float16 on a CUDA device: torch under ``torch.autocast``
            (float16 where autocast deems it safe), TensorRT with an fp16 engine, ONNX Runtime
            with a float16 graph (``rtseg export --half``, passed as ``engine``). Post-processing
            stays float32. Refused on a CPU (its kernels would emulate float16) and for Triton
            (the server's model decides its precision).

    The torch network is built in every case: post-processing reads its parameters
    (anchors, YOLACT++'s mask re-scoring head), and it is what gets exported.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, weights: str | None = None, device: str = "cpu",
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, backend: str = "torch",
                 engine: str | None = None, cache_dir: str | None = None, postprocess: str = "torch",
                 cuda_graph: bool = False, canvas: tuple[int, int] | None = None, rank_by: str = "score",
                 half: bool = False) -> None:
        remote = isinstance(backend, str) and backend.startswith(TRITON_SCHEME)
        if backend not in BACKENDS and not remote:
            raise ConfigError(f"unknown backend '{backend}', expected one of {', '.join(BACKENDS)} "
                              "or triton://HOST:PORT/MODEL")
        if engine is not None and (backend == "torch" or remote):
            raise ConfigError(f"an engine file is for --backend onnxruntime or tensorrt, not {backend}")
        if cuda_graph and backend != "tensorrt":
            raise ConfigError(f"--cuda-graph replays a TensorRT engine: it needs --backend tensorrt, got '{backend}'")
        if not 0.0 <= score_threshold < 1.0:
            raise ConfigError(f"score threshold must be in [0, 1), got {score_threshold}")
        if rank_by not in ("score", "mask_score"):
            raise ConfigError(f"rank_by must be 'score' or 'mask_score', got {rank_by!r}")
        self.rank_by = rank_by
        try:
            self.canvas = check_canvas(canvas)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.config: ModelConfig = get_config(model)
        self.device = parse_device(device)
        self.half = bool(half)
        if self.half:
            from rtseg.preflight import check_half

            check_half(str(self.device), backend, engine)
        self.ops = self._postprocess_ops(postprocess, self.device)
        self.family = family_of(self.config)
        self._geometries: dict[tuple[int, int], InputGeometry] = {}
        if self.canvas is not None:
            try:  # refused here, before anything is built, where the family cannot take it
                self.family.geometry(self.config, self.canvas, self.canvas)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self.score_threshold = float(score_threshold)
        self.model_name = model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the random-init fallback is reproducible
            net = self.family.build(self.config)
        if weights is None:
            weights = builtin_weights_path(model)
            self.weights_origin = "built-in" if weights else "random initialisation"
        else:
            self.weights_origin = weights
        if weights is not None:
            load_weights(net, weights, model_name=model, convert=net.load_official_state_dict)
        else:
            log.warning("model '%s' has no built-in weights and no --weights was given: running with a random "
                        "initialisation, so the detections are meaningless (%s)", model, self.config.weights_source)
        self.net = net.eval().to(self.device)
        self.weights_path = weights
        self.cuda_graph = cuda_graph  # --backend tensorrt: replay inference as a CUDA graph
        #: the family's second stage as post-processing calls it (``None``: the torch module of
        #: ``self.net``, or no second stage); set by the backends that run it
        self.stage2: Stage2 | None = None
        self.backend = self._make_backend(backend, engine, cache_dir)

    @staticmethod
    def _postprocess_ops(postprocess: str, device: torch.device) -> PostprocessOps:
        if postprocess == "torch":
            return TORCH_OPS
        if postprocess != "cuda":
            raise ConfigError(f"unknown post-processing '{postprocess}', expected torch or cuda")
        from rtseg import kernels

        if device.type != "cuda":
            raise ConfigError(f"--postprocess cuda runs rtseg's CUDA kernels and needs --device cuda[:N], got '{device}'")
        if not kernels.kernels_available(device):
            raise ConfigError(f"--postprocess cuda: cannot launch kernels on {device} (needs a CUDA GPU torch can use, "
                              "pycuda (pip install 'rtseg[gpu]') or CuPy, and nvcc or NVRTC); use --postprocess torch")
        return cuda_ops()

    def _make_backend(self, backend: str, engine: str | None, cache_dir: str | None) -> Backend:
        if backend == "torch":
            return TorchBackend(self.net, half=self.half)
        if backend.startswith(TRITON_SCHEME):
            from rtseg.backends.triton_backend import TritonBackend, parse_triton_url

            parse_triton_url(backend)  # a malformed URL is one error line before the forward pass below
            h, w = self.input_size
            with torch.inference_mode():  # the head outputs (names, per-image shapes) the server must return
                example = self.net(torch.zeros(1, 3, h, w, device=self.device))
            backend_ = TritonBackend(backend, model=self.model_name, expected_input=(3, h, w),
                                     expected_outputs={n: tuple(t.shape[1:]) for n, t in example.items()},
                                     device=self.device)
            module = self.family.stage2(self.net, self.config)
            if module is not None:  # the second stage runs on the server too (model <MODEL>_stage2)
                self.stage2 = self._triton_stage2(backend_, module)
            return backend_
        if backend == "onnxruntime":
            from rtseg.backends.onnxruntime_backend import OnnxRuntimeBackend
            from rtseg.export.cache import cached_onnx

            # frame-size-dependent inputs need a graph with symbolic height / width
            dynamic_hw = self.canvas is None and self.geometry_follows_frame
            path = engine or cached_onnx(self.net, self.config, self.weights_path, cache_dir, dynamic_hw=dynamic_hw)
            backend_ = OnnxRuntimeBackend(path, model=self.model_name, device=self.device)
            self._check_graph_shape(path, backend_.input_shape)
            if self.half and backend_.manifest["input"].get("dtype") != "float16":
                raise ConfigError(f"--half with --backend onnxruntime needs a float16 graph, '{path}' is float32: "
                                  f"rtseg export --model {self.model_name} --half, then --engine PATH")
            if self.family.stage2(self.net, self.config) is not None:
                self.stage2 = self._onnxruntime_stage2(path, backend_.manifest)
            return backend_
        from rtseg.backends.tensorrt_backend import TensorRTBackend

        if engine is None:
            raise ConfigError(f"--backend tensorrt needs an engine file: rtseg export --model {self.model_name} "
                              "--format engine, then pass --engine PATH")
        backend_ = TensorRTBackend(engine, model=self.model_name, device=self.device, cuda_graph=self.cuda_graph,
                                   half=self.half)
        if self.family.stage2(self.net, self.config) is not None:
            from rtseg.backends.tensorrt_backend import TensorRTStage2
            from rtseg.export.engine import stage2_engine_path_for

            self.stage2 = TensorRTStage2(stage2_engine_path_for(engine), model=self.model_name, device=self.device)
        return backend_

    def _triton_stage2(self, backend: Backend, module: torch.nn.Module) -> Stage2:
        """The server's ``<MODEL>_stage2``, checked against the local stage-2 module's tensors
        (names, dtypes, shapes with ``-1`` for ``K``) from a run on two example RoIs."""
        from rtseg.backends.triton_backend import _STAGE2_DTYPES, TritonStage2
        from rtseg.families.base import TorchStage2

        example = dict(zip(module.input_names, module.example_inputs(2, self.device)))
        out = TorchStage2(module)(example)

        def spec(tensors: dict[str, torch.Tensor], float_out: bool = False) -> dict:
            return {n: ("FP32" if float_out else _STAGE2_DTYPES[t.dtype], (-1, *t.shape[1:])) for n, t in tensors.items()}

        try:
            return TritonStage2(backend, expected_inputs=spec(example),
                                expected_outputs=spec({n: out[n] for n in module.output_names}, float_out=True))
        except EngineError:
            backend.close()
            raise

    def _onnxruntime_stage2(self, path: str, manifest: dict) -> Stage2:
        """The second stage exported beside the stage-1 graph ``path``, refused when missing or
        when it is not the one exported with it."""
        from rtseg.backends.onnxruntime_backend import OnnxRuntimeStage2
        from rtseg.export.onnx_export import stage2_path_for

        stage2_path = stage2_path_for(path)
        rebuild = f"rtseg export --model {self.model_name} --format onnx"
        if not os.path.isfile(stage2_path):
            raise EngineError(f"model {self.model_name} has a second stage but '{stage2_path}' is missing beside "
                              f"'{path}'; export both with: {rebuild}")
        stage2 = OnnxRuntimeStage2(stage2_path, model=self.model_name, device=self.device)
        expected = (manifest.get("stage2") or {}).get("onnx_sha256")
        if expected != stage2.manifest.get("onnx_sha256"):
            raise EngineError(f"'{stage2_path}' (ONNX SHA-256 {str(stage2.manifest.get('onnx_sha256'))[:12]}) is not the "
                              f"stage 2 exported with '{path}' (which names {str(expected)[:12]}); export both with: {rebuild}")
        return stage2

    def _check_graph_shape(self, path: str, shape: list) -> None:
        """A graph with a fixed height and width serves only that input: say so now, not per frame."""
        hw = shape[2:] if len(shape) == 4 else []
        if not all(isinstance(v, int) for v in hw) or len(hw) != 2:
            return  # symbolic height / width: any padded size
        fixed = (int(hw[0]), int(hw[1]))
        if self.canvas is None and self.geometry_follows_frame:
            raise ConfigError(f"'{path}' takes a fixed {fixed[0]}x{fixed[1]} input but model {self.model_name} sizes its input "
                              f"per frame: pass --canvas {fixed[0]}x{fixed[1]} (detections then differ from upstream's) or "
                              "export with dynamic height / width (rtseg export does for this model)")
        if self.canvas is not None and self.canvas != fixed:
            raise ConfigError(f"'{path}' takes a fixed {fixed[0]}x{fixed[1]} input, not the --canvas "
                              f"{self.canvas[0]}x{self.canvas[1]}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def input_size(self) -> tuple[int, int]:
        """The fixed input ``(H, W)``: the ``canvas`` when given, else the config's (training)
        size; with the per-frame-size geometry (:meth:`geometry`) the network input of a frame
        can differ from it."""
        return self.canvas or self.config.input_size

    @property
    def geometry_follows_frame(self) -> bool:
        """Whether the network input shape depends on the frame size (official keep-ratio
        variants without a ``canvas``)."""
        if self.canvas is not None:
            return False
        return len({self.geometry(size).padded for size in ((480, 640), (640, 480))}) > 1

    def geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """The input geometry of frames of ``image_size (H, W)``, computed once per size."""
        key = (int(image_size[0]), int(image_size[1]))
        found = self._geometries.get(key)
        if found is None:
            if len(self._geometries) >= 16:  # a few sizes in practice; stay bounded on odd inputs
                self._geometries.clear()
            try:
                found = self.family.geometry(self.config, key, self.canvas)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            self._geometries[key] = found
        return found

    # -- the three stages, separately callable for timing and for other backends --------------
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``uint8[H, W, 3]`` BGR -> ``float32[1, 3, *geometry(image size).padded]`` on the model's device.

        On CUDA the frame goes up through a pinned staging buffer (:func:`rtseg.device.upload`,
        an asynchronous copy on the current stream), and a family that resamples on the host
        (the official uint8 resize, :func:`rtseg.postprocess.resize.resize_uint8`) reads the
        frame it came from instead of copying the upload back (:func:`host_twin`). The frame is
        uploaded either way (the family decides what it reads); that copy is asynchronous and
        waits for nothing."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            found = f"{image.dtype}{image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image must be uint8 (H, W, 3) BGR, got {found}")
        geometry = self.geometry(image.shape[:2])
        batch = devices.upload(image, self.device)[None]
        with host_twin(batch, image[None]):
            return self.family.preprocess(batch, self.config, geometry, self.ops)

    def infer(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named raw head outputs from the backend (see the family's network, e.g.
        :class:`rtseg.families.yolact.network.Yolact`)."""
        return self.backend(batch)

    @torch.inference_mode()
    def postprocess(self, outputs: dict[str, torch.Tensor], image_size: tuple[int, int]) -> Instances:
        """Outputs of one frame of ``image_size`` (preprocessed by :meth:`preprocess`) -> :class:`Instances`."""
        geometry = self.geometry(image_size)
        instances = self.family.postprocess(outputs, self.net, self.config, image_size, self.score_threshold,
                                            self.ops, geometry, self.stage2)
        if self.rank_by == "mask_score":
            instances = instances.ranked_by_mask_score(self.score_threshold)
        return instances

    def process(self, image: np.ndarray) -> tuple[Instances, StageTimes]:
        """Segment one image and report the time of each stage: ``process_batch([image])[0]``."""
        return self.process_batch([image])[0]

    def process_batch(self, images: "list[np.ndarray]") -> list[tuple[Instances, StageTimes]]:
        """Segment several images (e.g. the newest frame of several streams) with as few
        backend calls as their input shapes allow: images whose network input shape
        (:meth:`geometry` ``.padded``) is equal are stacked into one ``float32[B, 3, H, W]``
        batch and run in one call; the outputs are split back per image and post-processed
        one by one. Returns ``(instances, times)`` per image, in the order given; a stage's
        time is its group's time divided by the group's size (each image's share), so the
        per-frame figures add up to the batch's wall time.

        On CUDA everything runs on the calling thread's own stream
        (:func:`rtseg.device.on_worker_stream`) and is timed by events on it
        (:func:`rtseg.device.stage_clock`); the only waits are the results' copy to the host
        (and what ``rtseg.device`` lists). ``rtseg run`` (one frame or a batch per call) and
        ``rtseg bench`` both run this method."""
        if not images:
            return []
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.ndim != 3:
                found = f"{image.dtype}{image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"image must be uint8 (H, W, 3) BGR, got {found}")
            groups.setdefault(self.geometry(image.shape[:2]).padded, []).append(i)
        results: list[tuple[Instances, StageTimes] | None] = [None] * len(images)
        with devices.on_worker_stream(self.device):
            for members in groups.values():
                clock = devices.stage_clock(self.device)
                clock.mark("start")
                parts = [self.preprocess(images[i]) for i in members]
                batch = parts[0] if len(parts) == 1 else torch.cat(parts)
                clock.mark("preprocess")
                outputs = self.infer(batch)
                clock.mark("inference")
                found = []
                for j, i in enumerate(members):
                    one = outputs if len(members) == 1 else {k: v[j:j + 1] for k, v in outputs.items()}
                    found.append(self.postprocess(one, (images[i].shape[0], images[i].shape[1])))
                clock.mark("postprocess")  # the results are on the host: the events are read without waiting
                seconds = clock.seconds()
                n = len(members)
                times = StageTimes(seconds["preprocess"] / n, seconds["inference"] / n, seconds["postprocess"] / n)
                for i, inst in zip(members, found):
                    results[i] = (inst, times)
        return results  # type: ignore[return-value]

    def warmup(self, runs: int = 2, image_size: tuple[int, int] | None = None) -> None:
        """Run the model on a blank frame (of ``image_size``, default :attr:`input_size`) so
        one-time costs (kernel selection, allocator growth) are paid before the first real
        frame is timed."""
        blank = np.zeros((*(image_size or self.input_size), 3), np.uint8)
        for _ in range(runs):
            self.process(blank)
        stream = devices.worker_stream(self.device)
        if stream is not None:
            # not the hot path: whatever the warm-up created lazily on this thread's stream is
            # complete before other threads' streams read it
            stream.synchronize()

    def __call__(self, image: np.ndarray) -> Instances:
        return self.process(image)[0]


def configure_threads(threads: int | None, workers: int = 1) -> int:
    """Set torch's intra-op thread count and return it: ``threads``, or by default the cores
    shared out among ``workers`` inference threads (at least one each)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    n = threads or max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(n)
    return n
