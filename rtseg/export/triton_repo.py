"""``rtseg export --format triton-repo DIR``: a Triton Inference Server model repository.

The layout and ``config.pbtxt`` follow Triton's model-repository and model-configuration
documents (triton-inference-server/server, ``docs/user_guide/model_repository.md`` and
``docs/user_guide/model_configuration.md``) and the message they describe,
``ModelConfig`` in triton-inference-server/common ``protobuf/model_config.proto``::

    DIR/<model>/config.pbtxt
    DIR/<model>/1/model.onnx        (platform onnxruntime_onnx; the default_model_filename)
    DIR/<model>/1/model.plan        (platform tensorrt_plan, when an engine is given)
    DIR/<model>/1/model.json        (rtseg's manifest of the ONNX export, or of the engine)
    DIR/<model>_stage2/config.pbtxt (a family with a second stage: its ``<stem>.stage2.onnx``)
    DIR/<model>_stage2/1/model.onnx (platform onnxruntime_onnx, also beside a tensorrt_plan stage 1)
    DIR/<model>_stage2/1/model.json

The second stage (:func:`stage2_model_name`) is written with ``max_batch_size: 0`` and no
dynamic batching: its tensors' first axis is the ``K`` RoIs / detections of **one** frame
(``K`` a ``-1`` in ``dims``, the graph's symbolic ``rois``), not a batch of frames. Triton's
batcher would concatenate requests along that axis, which for these per-RoI heads would give
the same numbers, but it caps a batch at ``max_batch_size`` rows, so a frame with more RoIs
than that would be refused, and it buys little: stage 2 is called once per frame from that
frame's post-processing, on at most ``max_k`` small RoIs. With ``max_batch_size: 0`` every request
is one execution with its own ``K``.

Facts the generator relies on (same documents):

- With ``max_batch_size > 0`` Triton adds the batch dimension itself: ``dims`` leave it
  out, and the model's first dimension must be variable. The ONNX graph is therefore
  always exported with a symbolic batch (``export_onnx(dynamic_batch=True)``).
- A variable dimension is ``-1`` in ``dims``. Dims are read from the ONNX graph itself
  (``dim_value``, or ``-1`` for a symbolic ``dim_param``), so a graph with dynamic H/W
  inputs gives ``[3, -1, -1]`` with no change here.
- ``dynamic_batching { max_queue_delay_microseconds: N }``: how long the scheduler waits to
  fill a batch; ``instance_group [{ count: K kind: KIND_AUTO }]``: ``KIND_AUTO`` puts the
  instances on the GPUs when there are any, else on the CPU, so one repository loads on
  either kind of server.
- The model's name in the repository is rtseg's model name, which is what
  ``--backend triton://HOST:PORT/<model>`` asks for.

The repository is plain files: any stock Triton (the NGC container) loads it unchanged;
the tests parse ``config.pbtxt`` with tritonclient's ``model_config_pb2``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

from rtseg.errors import ConfigError, EngineError

#: the queue delay written when none is asked for: 2 ms, a tenth of a frame at 50 FPS
DEFAULT_QUEUE_DELAY_US = 2000
DEFAULT_MAX_BATCH_SIZE = 8

#: ONNX TensorProto element types -> Triton model-config data types
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 6: "TYPE_INT32", 7: "TYPE_INT64",
                   2: "TYPE_UINT8", 3: "TYPE_INT8", 9: "TYPE_BOOL", 16: "TYPE_BF16"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton's config names it: dims without the batch dimension."""

    name: str
    data_type: str  #: ``TYPE_FP32``, ...
    dims: tuple[int, ...]  #: ``-1`` where the graph's dimension is symbolic


#: suffix of the second stage's model name in a repository / on ``rtseg serve``
STAGE2_SUFFIX = "_stage2"


def stage2_model_name(name: str) -> str:
    """The Triton model serving the second stage of model ``name``: ``<name>_stage2``."""
    return name + STAGE2_SUFFIX


@dataclass(frozen=True)
class TritonRepo:
    """What :func:`write_triton_repo` wrote (``stage2``: the ``<model>_stage2`` folder, where the
    family has a second stage)."""

    model_dir: str
    config_path: str
    model_path: str
    manifest_path: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    stage2: "TritonRepo | None" = None


def graph_io(onnx_path: str, *, batched: bool = True) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The ONNX graph's inputs and outputs with the batch (first) dimension left out
    (``batched=False``: the whole shape, for ``max_batch_size: 0``; the first dimension must
    still be symbolic: the stage-2 graph's ``K``).

    Raises :class:`EngineError` when a first dimension is fixed (Triton's batching needs it
    variable) or a data type has no Triton equivalent."""
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def spec(value_info) -> TensorSpec:
        t = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims or dims[0] != -1:
            raise EngineError(f"'{onnx_path}': tensor '{value_info.name}' has shape {dims} with a fixed "
                              + ("batch dimension; a Triton repository with max_batch_size > 0 needs it symbolic "
                                 "(export with a dynamic batch)" if batched else
                                 "first dimension; a stage-2 graph has the number of RoIs K there, symbolic"))
        if t.elem_type not in _ONNX_TO_TRITON:
            raise EngineError(f"'{onnx_path}': tensor '{value_info.name}' has ONNX element type {t.elem_type}, "
                              f"expected one of {sorted(_ONNX_TO_TRITON)}")
        return TensorSpec(value_info.name, _ONNX_TO_TRITON[t.elem_type], tuple(dims[1:] if batched else dims))

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(spec(v) for v in model.graph.output)
    return inputs, outputs


def config_pbtxt(name: str, platform: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], *,
                 max_batch_size: int, queue_delay_us: int, instances: int, kind: str = "KIND_AUTO") -> str:
    """``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``); no
    ``dynamic_batching`` with ``max_batch_size: 0`` (a model without batching)."""

    def tensors(field: str, specs: tuple[TensorSpec, ...]) -> str:
        items = ",\n".join(f'  {{\n    name: "{s.name}"\n    data_type: {s.data_type}\n'
                           f'    dims: [ {", ".join(map(str, s.dims))} ]\n  }}' for s in specs)
        return f"{field} [\n{items}\n]\n"

    return (f'name: "{name}"\n'
            f'platform: "{platform}"\n'
            f"max_batch_size: {max_batch_size}\n"
            + tensors("input", inputs) + tensors("output", outputs)
            + (f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n" if max_batch_size > 0 else "")
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n")


def write_triton_repo(repo_dir: str, name: str, onnx_path: str, *, plan_path: str | None = None,
                      max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                      instances: int = 1) -> TritonRepo:
    """Write ``repo_dir/<name>/`` from a dynamic-batch ONNX export (with its manifest).

    ``plan_path``: a TensorRT engine of that ONNX ('rtseg export --format engine
    --dynamic-batch 1,OPT,MAX'): the repository then serves it with platform
    ``tensorrt_plan`` (``1/model.plan``); its optimisation profile must start at batch 1 and
    reach ``max_batch_size``. An engine only runs under the TensorRT version and GPU it was
    built with, so it must match the Triton server's (README, "Triton Inference Server").

    A family with a second stage (the manifest names its ``<stem>.stage2.onnx``) also gets
    ``repo_dir/<name>_stage2/`` (ONNX Runtime whatever stage 1's platform; the module docstring).

    The model's folder is replaced as a whole; other models in ``repo_dir`` are left alone.
    """
    from rtseg.export.onnx_export import read_manifest

    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
    if not isinstance(queue_delay_us, int) or queue_delay_us < 0:
        raise ConfigError(f"queue delay must be an integer number of microseconds >= 0, got {queue_delay_us!r}")
    if not isinstance(instances, int) or instances < 1:
        raise ConfigError(f"instances must be an integer >= 1, got {instances!r}")
    manifest: dict[str, Any] = read_manifest(onnx_path)
    inputs, outputs = graph_io(onnx_path)
    platform, filename = "onnxruntime_onnx", "model.onnx"
    source, source_manifest = onnx_path, manifest
    if plan_path is not None:
        if not os.path.isfile(plan_path):
            raise EngineError(f"engine '{plan_path}' not found")
        plan_manifest = read_manifest(plan_path)
        if plan_manifest.get("model") != manifest["model"]:
            raise EngineError(f"engine '{plan_path}' was built for model '{plan_manifest.get('model')}', "
                              f"not '{manifest['model']}'")
        profile = list(plan_manifest.get("input", {}).get("batch_profile") or [])
        if len(profile) != 3 or profile[0] != 1 or profile[2] < max_batch_size:
            raise EngineError(f"engine '{plan_path}' has batch profile {profile or 'none'}; a Triton repository with "
                              f"max_batch_size {max_batch_size} needs 1,OPT,MAX with MAX >= {max_batch_size} "
                              f"(rtseg build-engine --onnx ... --dynamic-batch 1,4,{max_batch_size})")
        platform, filename = "tensorrt_plan", "model.plan"
        source, source_manifest = plan_path, plan_manifest

    triton = {"name": name, "platform": platform, "max_batch_size": max_batch_size,
              "max_queue_delay_microseconds": queue_delay_us, "instances": instances}
    config = config_pbtxt(name, platform, inputs, outputs, max_batch_size=max_batch_size,
                          queue_delay_us=queue_delay_us, instances=instances)
    stage2 = None
    if manifest.get("stage2"):
        stage2 = _write_stage2(repo_dir, name, onnx_path, instances)  # checked and written before stage 1 is replaced
    model_dir = _write_model_dir(repo_dir, name, source, filename, {**source_manifest, "triton": triton}, config)
    return TritonRepo(model_dir, os.path.join(model_dir, "config.pbtxt"), os.path.join(model_dir, "1", filename),
                      os.path.join(model_dir, "1", "model.json"), platform, inputs, outputs, stage2)


def _write_model_dir(repo_dir: str, name: str, source: str, filename: str, manifest: dict, config: str) -> str:
    """``repo_dir/<name>/`` (version 1) replaced as a whole; returns its path."""
    model_dir = os.path.join(repo_dir, name)
    tmp_dir = model_dir + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(os.path.join(tmp_dir, "1"))
    shutil.copyfile(source, os.path.join(tmp_dir, "1", filename))
    with open(os.path.join(tmp_dir, "1", "model.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    with open(os.path.join(tmp_dir, "config.pbtxt"), "w", encoding="utf-8") as f:
        f.write(config)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp_dir, model_dir)
    return model_dir


def _write_stage2(repo_dir: str, name: str, onnx_path: str, instances: int) -> TritonRepo:
    """``repo_dir/<name>_stage2/`` from the ``<stem>.stage2.onnx`` exported beside ``onnx_path``
    (ONNX Runtime, max_batch_size 0: see the module docstring)."""
    from rtseg.export.onnx_export import STAGE2_SCHEMA, read_manifest, stage2_path_for

    path = stage2_path_for(onnx_path)
    rebuild = f"export both with: rtseg export --model {read_manifest(onnx_path)['model']} --format triton-repo DIR"
    if not os.path.isfile(path):
        raise EngineError(f"'{onnx_path}' names a second stage but '{path}' is missing beside it; {rebuild}")
    manifest = read_manifest(path)
    expected = read_manifest(onnx_path)["stage2"].get("onnx_sha256")
    if manifest.get("schema") != STAGE2_SCHEMA or manifest.get("onnx_sha256") != expected:
        raise EngineError(f"'{path}' is not the stage 2 exported with '{onnx_path}'; {rebuild}")
    inputs, outputs = graph_io(path, batched=False)
    model = stage2_model_name(name)
    platform = "onnxruntime_onnx"
    config = ("# the second stage of " + name + ": the first dimension of every tensor is the number of RoIs /\n"
              "# detections K of one frame (-1), not a batch of frames, hence max_batch_size 0 and no\n"
              "# dynamic batching (rtseg.export.triton_repo)\n"
              + config_pbtxt(model, platform, inputs, outputs, max_batch_size=0, queue_delay_us=0, instances=instances))
    triton = {"name": model, "platform": platform, "max_batch_size": 0, "instances": instances, "stage1": name}
    model_dir = _write_model_dir(repo_dir, model, path, "model.onnx", {**manifest, "triton": triton}, config)
    return TritonRepo(model_dir, os.path.join(model_dir, "config.pbtxt"), os.path.join(model_dir, "1", "model.onnx"),
                      os.path.join(model_dir, "1", "model.json"), platform, inputs, outputs)


def export_triton_repo(repo_dir: str | None, model: str, *, weights: str | None = None,
                       max_batch_size: int | None = None, queue_delay_us: int | None = None, instances: int = 1,
                       opset: int | None = None, half: bool = False, plan_path: str | None = None) -> TritonRepo:
    """``rtseg export --format triton-repo DIR``: export ``model`` (dynamic batch) and write
    its repository folder ``DIR/<model>/`` (and ``DIR/<model>_stage2/`` for a second stage)."""
    import tempfile

    from rtseg.export.onnx_export import DEFAULT_OPSET, export_onnx
    from rtseg.segmenter import Segmenter

    if not repo_dir:
        raise ConfigError("--format triton-repo needs the repository folder: rtseg export --format triton-repo DIR")
    if os.path.exists(repo_dir) and not os.path.isdir(repo_dir):
        raise ConfigError(f"Triton model repository must be a folder, found a file at '{repo_dir}'")
    seg = Segmenter(model, weights=weights)
    with tempfile.TemporaryDirectory(prefix="rtseg-triton-") as tmp:
        result = export_onnx(seg.net, seg.config, os.path.join(tmp, "model.onnx"), dynamic_batch=True,
                             opset=opset or DEFAULT_OPSET, weights=seg.weights_path, half=half)
        return write_triton_repo(repo_dir, model, result.path, plan_path=plan_path,
                                 max_batch_size=max_batch_size or DEFAULT_MAX_BATCH_SIZE,
                                 queue_delay_us=DEFAULT_QUEUE_DELAY_US if queue_delay_us is None else queue_delay_us,
                                 instances=instances)
