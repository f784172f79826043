"""``rtseg export --format onnx``: the network up to its named raw head outputs, as ONNX.

- Exporter: torch's TorchScript-based ``torch.onnx.export(dynamo=False)``; it gives plain
  static graphs that the TensorRT parser takes (the dynamo exporter needs ``onnxscript``
  and is not needed for these convolutional networks).
- Deformable convolution (YOLACT++ DCNv2, SOLOv2-DCN, ``torchvision::deform_conv2d``) is
  exported as standard operators (GridSample + MatMul, :mod:`rtseg.export.deform_conv_onnx`)
  by default (``dcn="decomposed"``), which every TensorRT parses; ``dcn="deformconv"`` keeps
  the ONNX ``DeformConv`` (opset 19) that only ONNX Runtime runs (no TensorRT check then).
- Constant folding by the exporter, then ``onnxsim`` (shape arithmetic folded away).
- Post-processing stays out of the graph: it is data-dependent (NMS) and runs as torch
  ops (or the CUDA kernels) on the named outputs, the same for every backend.
- Every graph is checked by the real TensorRT ONNX parser where one is installed, else
  against its operator table (:func:`rtseg.export.tensorrt_ops.tensorrt_refusals`) before it
  is written; a refusal names the parser's error.

A manifest ``<file>.json`` is written beside the ``.onnx``: model, family, classes, input
and output names and shapes, opset, SHA-256 of the weights and of the ONNX file, versions.

Families with a second stage (CenterMask's RoI heads, YOLACT++'s mask re-scoring:
``Family.stage2``) get it exported too, as ``<stem>.stage2.onnx`` (and its ``<stem>.stage2.json``)
beside the stage-1 file (:func:`export_stage2_onnx`): float32, the number of RoIs / detections
``K`` symbolic (``rois``) on every input and output; the stage-1 manifest names it (``stage2``).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rtseg.errors import ConfigError, EngineError
from rtseg.export.deform_conv_onnx import DCN_MODES, deform_conv_export
from rtseg.export.tensorrt_ops import MAX_OPSET, MIN_OPSET, tensorrt_refusals

#: DeformConv entered the ONNX standard at opset 19
DEFAULT_OPSET = 19
INPUT_NAME = "images"
MANIFEST_SCHEMA = "rtseg.onnx/1"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_REGISTERED = False


def _register_deform_conv() -> None:
    """Map ``torchvision::deform_conv2d`` to ONNX ``DeformConv`` (same offset layout: (dy, dx)
    pairs per kernel tap; mask multiplies each tap) for the TorchScript exporter."""
    global _REGISTERED
    if _REGISTERED:
        return
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    # torchvision.ops.deform_conv2d's op: (input, weight, offset, mask, bias, stride_h, stride_w,
    # pad_h, pad_w, dilation_h, dilation_w, n_weight_grps, n_offset_grps, use_mask)
    @sh.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def symbolic(g, inp, weight, offset, mask, bias, st_h, st_w, pad_h, pad_w, dil_h, dil_w, n_wgrp, n_ogrp, use_mask):
        inputs = [inp, weight, offset, bias] + ([mask] if use_mask else [])
        return g.op("DeformConv", *inputs, dilations_i=[dil_h, dil_w], group_i=n_wgrp, offset_group_i=n_ogrp,
                    pads_i=[pad_h, pad_w, pad_h, pad_w], strides_i=[st_h, st_w])

    register_custom_op_symbolic("torchvision::deform_conv2d", symbolic, DEFAULT_OPSET)
    _REGISTERED = True


class _NamedOutputs(nn.Module):
    """The network with its dict of outputs flattened to a tuple (ONNX outputs are positional)."""

    def __init__(self, net: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.net = net
        self.names = names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        return tuple(out[n] for n in self.names)


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote (``stage2``: the second stage's export, where the family has one)."""

    path: str
    manifest_path: str
    manifest: dict[str, Any]
    stage2: OnnxExport | None = None


def manifest_path_for(path: str) -> str:
    return os.path.splitext(path)[0] + ".json"


def stage2_path_for(path: str) -> str:
    """``<stem>.stage2.onnx`` beside the stage-1 file ``<stem>.onnx`` (or engine ``<stem>.engine``)."""
    return os.path.splitext(path)[0] + ".stage2.onnx"


#: the symbolic first axis of every stage-2 input and output
STAGE2_AXIS = "rois"
STAGE2_SCHEMA = "rtseg.onnx.stage2/1"


def _finish_graph(tmp: str, path: str, *, simplify: bool, graph: str, refused_by: str,
                  skip_tensorrt_check: str | None = None) -> tuple[Any, str]:
    """The exported graph at ``tmp`` simplified (onnxsim), checked against TensorRT's parser
    (unless ``skip_tensorrt_check`` says why not), checked by ONNX and moved to ``path``:
    ``(model, what checked it)``. ``tmp`` is removed on every refusal, each one
    :class:`EngineError` line naming ``graph`` / ``refused_by``."""
    import onnx

    model = onnx.load(tmp)
    if simplify:
        try:
            import onnxsim
        except ImportError:
            _remove(tmp)
            raise EngineError("ONNX simplification needs 'onnxsim': pip install 'rtseg[onnx]' (or pass simplify=False)") from None
        model, ok = onnxsim.simplify(model)
        if not ok:
            _remove(tmp)
            raise EngineError(f"onnxsim could not validate the simplified {graph}")
    if skip_tensorrt_check is not None:
        checker = skip_tensorrt_check
    else:
        checker, problems = tensorrt_refusals(model)
        if problems:
            _remove(tmp)
            raise EngineError(f"{refused_by}: the {checker} refuses the exported graph ({len(problems)} error(s)): "
                              f"{'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}")
    onnx.checker.check_model(model)
    onnx.save(model, tmp)
    os.replace(tmp, path)
    return model, checker


def export_stage2_onnx(net: nn.Module, cfg: Any, path: str, *, opset: int = DEFAULT_OPSET,
                       weights: str | None = None, simplify: bool = True) -> OnnxExport | None:
    """Export the family's second stage of ``net`` (``Family.stage2(net, cfg)``) to ``path``, with
    its manifest beside it; ``None`` (nothing written) where the family / variant has none.

    float32 whatever the stage-1 precision (post-processing hands it float32 tensors); the first
    axis of every input and output symbolic (:data:`STAGE2_AXIS`), the rest fixed by the config.
    Checked against TensorRT as stage 1 is. Raises :class:`EngineError` as :func:`export_onnx`.
    """
    from rtseg.families import family_of

    module = family_of(cfg).stage2(net, cfg)
    if module is None:
        return None
    import onnx

    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        example = module.example_inputs(2, device)
        names_in, names_out = list(module.input_names), list(module.output_names)
        axes = {n: {0: STAGE2_AXIS} for n in (*names_in, *names_out)}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, example, tmp, input_names=names_in, output_names=names_out,
                                  opset_version=opset, do_constant_folding=True, dynamic_axes=axes, dynamo=False)
        except Exception as exc:  # the exporter raises many types
            _remove(tmp)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EngineError(f"ONNX export of {cfg.name}'s stage 2 failed: {first[:300]}") from None
    finally:
        net.train(was_training)
    model, checker = _finish_graph(tmp, path, simplify=simplify, graph=f"stage-2 graph of {cfg.name}",
                                   refused_by=f"{cfg.name} stage 2")
    dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}

    def describe(value_info) -> dict[str, Any]:
        t = value_info.type.tensor_type
        return {"name": value_info.name, "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
                "dtype": dtypes.get(t.elem_type, str(t.elem_type))}

    from rtseg import __version__

    manifest = {
        "schema": STAGE2_SCHEMA,
        "model": cfg.name,
        "family": cfg.family,
        "stage": 2,
        "max_k": int(module.max_k),  # the most RoIs / detections post-processing hands it
        "inputs": [describe(i) for i in model.graph.input],
        "outputs": [describe(o) for o in model.graph.output],
        "opset": opset,
        "tensorrt_check": checker,
        "weights": weights,
        "weights_sha256": sha256_file(weights) if weights and os.path.isfile(weights) else None,
        "onnx_sha256": sha256_file(path),
        "exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rtseg": __version__,
    }
    mpath = manifest_path_for(path)
    with open(mpath, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return OnnxExport(path, mpath, manifest)


def export_onnx(net: nn.Module, cfg: Any, path: str, *, batch: int = 1, dynamic_batch: bool = False,
                opset: int = DEFAULT_OPSET, weights: str | None = None, simplify: bool = True,
                half: bool = False, dcn: str = "decomposed", dynamic_hw: bool = False) -> OnnxExport:
    """Export ``net`` (any family's network, eval mode) to ``path``.

    Args:
        net: the network; its eval-mode ``forward`` returns the named head outputs.
        cfg: its config (``name``, ``family``, ``class_names``, ``input_size``).
        batch: the batch size baked into the graph (the example input's), ``>= 1``.
        dynamic_batch: make the batch dimension symbolic (``batch``) instead.
        opset: ONNX opset, within what TensorRT 10 parses (``9..20``; DCN needs ``>= 19``).
        weights: path of the weights file (hashed into the manifest), if any.
        simplify: run ``onnxsim`` after export.
        half: export in float16 (weights, input and outputs): the precision a strongly typed
            TensorRT network takes from the graph. The network is exported from a float16
            copy; ``net`` itself is left as it is.
        dcn: how deformable convolutions export (:data:`rtseg.export.deform_conv_onnx.DCN_MODES`):
            ``decomposed`` (standard operators, every TensorRT) or ``deformconv`` (ONNX
            ``DeformConv``, ONNX Runtime only: the TensorRT check is skipped).
        dynamic_hw: make the input height and width symbolic (``height``, ``width``; any
            multiples of 32), and every output dimension that follows them: the official
            keep-ratio SOLOv2 / CenterMask variants take a different shape per frame size.

    ``net`` is exported in eval mode and comes back in the mode it was in.

    Raises:
        ConfigError: a bad batch or opset.
        EngineError: a missing ``onnx`` / ``onnxsim`` package, a graph TensorRT would refuse
            (the unsupported operators named), or an exporter failure.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(f"export batch must be an integer >= 1, got {batch!r}")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET} (what TensorRT 10 parses), got {opset!r}")
    if importlib.util.find_spec("onnx") is None:
        raise EngineError("ONNX export needs the 'onnx' package: pip install 'rtseg[onnx]'")
    # rtseg's deformable convolutions (YOLACT++ DCNv2, mmdet-style DCN / DCNv2 in SOLOv2) all call
    # torchvision.ops.deform_conv2d from a module whose class name says DeformConv
    uses_dcn = any("DeformConv" in type(m).__name__ for m in net.modules())
    if dcn not in DCN_MODES:
        raise ConfigError(f"dcn must be one of {', '.join(DCN_MODES)}, got {dcn!r}")
    if uses_dcn and dcn == "deformconv" and opset < 19:
        raise ConfigError(f"model {cfg.name} has deformable convolutions: ONNX DeformConv needs opset >= 19, got {opset}")
    if uses_dcn and dcn == "decomposed" and opset < 16:
        raise ConfigError(f"model {cfg.name} has deformable convolutions: their GridSample needs opset >= 16, got {opset}")

    was_training = net.training  # the caller's network comes back in the mode it was in
    try:
        result = _export(net.eval(), cfg, path, batch=batch, dynamic_batch=dynamic_batch, opset=opset, weights=weights,
                         simplify=simplify, half=half, uses_dcn=uses_dcn, dcn=dcn, dynamic_hw=dynamic_hw)
    finally:
        net.train(was_training)
    stage2 = export_stage2_onnx(net, cfg, stage2_path_for(path), opset=opset, weights=weights, simplify=simplify)
    manifest = dict(result.manifest)
    manifest["stage2"] = None if stage2 is None else {"path": os.path.basename(stage2.path),
                                                      "onnx_sha256": stage2.manifest["onnx_sha256"]}
    with open(result.manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return OnnxExport(result.path, result.manifest_path, manifest, stage2)


def _export(net: nn.Module, cfg: Any, path: str, *, batch: int, dynamic_batch: bool, opset: int,
            weights: str | None, simplify: bool, half: bool, uses_dcn: bool, dcn: str = "decomposed",
            dynamic_hw: bool = False) -> OnnxExport:
    """:func:`export_onnx` after its checks, with ``net`` in eval mode."""
    import onnx

    device = next(net.parameters()).device
    if half:
        import copy

        net = copy.deepcopy(net).half()
    h, w = cfg.input_size
    example = torch.zeros(batch, 3, h, w, device=device, dtype=torch.float16 if half else torch.float32)
    with torch.inference_mode():
        names = tuple(net(example).keys())
    wrapper = _NamedOutputs(net, names).eval()  # eval: the exporter restores the wrapper's mode afterwards
    if uses_dcn and dcn == "deformconv":
        _register_deform_conv()
    dynamic_axes = {n: {0: "batch"} for n in (INPUT_NAME, *names)} if dynamic_batch else None
    if dynamic_hw:
        dynamic_axes = _hw_axes(net, example, names, dynamic_axes or {})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    import warnings

    try:
        with warnings.catch_warnings(), deform_conv_export(net, dcn if uses_dcn else "deformconv"):
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(wrapper, (example,), tmp, input_names=[INPUT_NAME], output_names=list(names),
                              opset_version=opset, do_constant_folding=True, dynamic_axes=dynamic_axes, dynamo=False)
    except Exception as exc:  # the exporter raises many types
        _remove(tmp)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EngineError(f"ONNX export of {cfg.name} failed: {first[:300]}") from None
    # for ONNX Runtime: no TensorRT parser takes DeformConv
    skip = "skipped: DeformConv kept for ONNX Runtime" if uses_dcn and dcn == "deformconv" else None
    model, checker = _finish_graph(tmp, path, simplify=simplify, graph=f"graph of {cfg.name}", refused_by=cfg.name,
                                   skip_tensorrt_check=skip)

    def dims(value_info) -> list:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    manifest = {
        "schema": MANIFEST_SCHEMA,
        "model": cfg.name,
        "family": cfg.family,
        "class_names": list(cfg.class_names),
        "input": {"name": INPUT_NAME, "shape": dims(model.graph.input[0]), "dtype": "float16" if half else "float32"},
        "outputs": [{"name": o.name, "shape": dims(o)} for o in model.graph.output],
        "opset": opset,
        "dynamic_batch": bool(dynamic_batch),
        "dcn": dcn if uses_dcn else None,
        "tensorrt_check": checker,
        "dynamic_hw": bool(dynamic_hw),
        "weights": weights,
        "weights_sha256": sha256_file(weights) if weights and os.path.isfile(weights) else None,
        "onnx_sha256": sha256_file(path),
        "exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    from rtseg import __version__

    manifest["rtseg"] = __version__
    mpath = manifest_path_for(path)
    with open(mpath, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return OnnxExport(path, mpath, manifest)


def _hw_axes(net: nn.Module, example: torch.Tensor, names: tuple[str, ...],
             axes: dict[str, dict[int, str]]) -> dict[str, dict[int, str]]:
    """``axes`` plus symbolic input height / width and every output dimension that changes
    when they do (found by running ``net`` at a second size, 64 rows and 32 columns more)."""
    b, c, h, w = example.shape
    other = example.new_zeros((b, c, h + 64, w + 32))
    with torch.inference_mode():
        first = net(example)
        second = net(other)
    out = {n: dict(v) for n, v in axes.items()}
    out.setdefault(INPUT_NAME, {}).update({2: "height", 3: "width"})
    for n in names:
        for i, (d1, d2) in enumerate(zip(first[n].shape, second[n].shape)):
            if d1 != d2:
                out.setdefault(n, {})[i] = f"{n}_dim{i}"
    return out


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest beside an ``.onnx`` or engine file, or :class:`EngineError` saying what is wrong."""
    mpath = manifest_path_for(path)
    if not os.path.isfile(mpath):
        raise EngineError(f"no manifest '{mpath}' beside '{path}': make the file with 'rtseg export'")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise EngineError(f"manifest '{mpath}' is not readable JSON: {exc}") from None
    if not isinstance(manifest, dict) or "model" not in manifest or not ("input" in manifest or "inputs" in manifest):
        raise EngineError(f"manifest '{mpath}' lacks the 'model' and 'input' (stage 2: 'inputs') fields 'rtseg export' "
                          "writes")
    return manifest


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
