"""Loading weights files strictly, with one-line errors that say what does not fit.

Accepted layouts: a bare ``state_dict`` (dbolya/yolact ``save_weights``), or a dict wrapping
one under ``"model"`` (detectron2 / rtseg training checkpoints) or ``"state_dict"``
(mmdetection / mmcv). Files are read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never arbitrary pickled code.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

import torch
from torch import nn

from rtseg.errors import CheckpointError
from rtseg.preflight import check_weights_file

#: ``weights_source`` of the models whose weights ship in rtseg/weights/: ``rtseg models`` says
#: "built in" from the file itself, so this text is shown only when the file is absent
BUILTIN_WEIGHTS_MISSING = "built-in weights file missing from this install: reinstall rtseg or pass --weights PATH"

#: buffers that checkpoints saved by PyTorch < 0.4.1 do not have (BatchNorm counters; unused in eval)
OPTIONAL_SUFFIXES = (".num_batches_tracked",)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``{key: tensor}`` dict, or raise :class:`CheckpointError`."""
    check_weights_file(path)  # there, a file, not empty
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, KeyError, ...)
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        # torch >= 2.6 leads with a paragraph on weights_only; the unpickler's reason comes later
        reason = lines[0] if lines else type(exc).__name__
        for i, line in enumerate(lines):
            if "WeightsUnpickler error:" in line:
                after = line.split("WeightsUnpickler error:", 1)[1].strip()
                reason = after or (lines[i + 1] if i + 1 < len(lines) else reason)
                break
        what, torch_says = describe_file(path)
        detail = f" (torch: {reason[:160]})" if torch_says else ""
        raise CheckpointError(
            f"weights file '{path}' is not a readable PyTorch checkpoint: expected a file written by torch.save "
            f"(a zip archive with data.pkl, or a legacy pickle), found {what}, {os.path.getsize(path)} bytes{detail}"
        ) from None
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"weights file '{path}' holds {type(obj).__name__}, expected a state_dict of tensors "
            "(bare, or under 'model' / 'state_dict')"
        )
    return dict(obj)


def describe_file(path: str) -> tuple[str, bool]:
    """What a file that ``torch.load`` refused looks like, from its first bytes: ``(text,
    torch's own reason helps)``, e.g. ``("a text file starting 'hello'", False)``."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(4096)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "a damaged zip archive", True
        if not any(name.endswith("/data.pkl") for name in names):
            shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            return f"a zip archive without data.pkl ({len(names)} entries: {shown or 'none'})", False
        return "a PyTorch zip archive torch cannot read (damaged, or from a newer torch)", True
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras / h5py weights?)", False
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file (unpack it first)", False
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return f"a pickle (protocol {head[1]}) that is not a loadable checkpoint", True
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file (load it with safetensors.torch.load_file and torch.save the result)", False
    if head[:1] == b"\x08" and _is_onnx(path):  # field 1 (ir_version) of an ONNX ModelProto comes first
        return "an ONNX model (use it with --backend onnxruntime --engine FILE)", False
    if not any(byte < 0x20 and byte not in b"\t\n\r" for byte in head):
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 3:  # not just a character cut by the 4096-byte read
                return f"binary data starting {head[:8].hex(' ')}", True
            text = head[:exc.start].decode("utf-8")
        stripped = text.lstrip()
        if stripped.startswith("version https://git-lfs"):
            return "a Git LFS pointer, not the file it points to (run 'git lfs pull')", False
        if stripped[:15].lower().startswith(("<!doctype html", "<html")):
            return "an HTML page (a download that returned a web page?)", False
        first = stripped.splitlines()[0][:40] if stripped else ""
        return (f"a text file starting {first!r}" if first else "a text file of blank lines"), False
    return f"binary data starting {head[:8].hex(' ')}", True


def _is_onnx(path: str) -> bool:
    try:
        import onnx
    except ImportError:
        return path.lower().endswith(".onnx")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: not an ONNX model
        return False
    return len(model.graph.node) > 0


def _short(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys.

    ``what`` names the file and model for the message. Non-finite values are refused too.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected {_short(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped (file vs model) {_short(misshaped, 3)}")
    if problems:
        raise CheckpointError(f"{what} does not fit: " + "; ".join(problems))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{what} contains NaN or infinite values in {_short(bad)}")


def cast_floating(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose floating tensors take the dtype of ``reference``'s tensor of
    the same key (e.g. float16 file -> float32 model); other tensors and keys are unchanged."""
    out = {}
    for k, v in state.items():
        ref = reference.get(k)
        if ref is not None and v.is_floating_point() and ref.is_floating_point() and v.dtype != ref.dtype:
            v = v.to(ref.dtype)
        out[k] = v
    return out


def load_weights(model: nn.Module, path: str, *, model_name: str,
                 convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
    """Load ``path`` into ``model`` strictly (after the family's ``convert`` of upstream key
    layouts). Every key must be present with its shape; nothing extra is allowed.

    Floating-point tensors are cast to the dtype of the model's own tensor of that key, so a
    state_dict saved in float16 (the shipped built-in weights) loads into a float32 model.
    """
    state = read_state_dict(path)
    if convert is not None:
        state = convert(state)
    check_state_dict(model, state, what=f"weights file '{path}' for model '{model_name}'")
    state = cast_floating(state, model.state_dict())
    result = model.load_state_dict(state, strict=False)
    leftover = [k for k in result.missing_keys if not k.endswith(OPTIONAL_SUFFIXES)]
    assert not leftover and not result.unexpected_keys, (leftover, result.unexpected_keys)
