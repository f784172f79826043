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

#: ``weights_source`` of the models whose weights ship in rtseg/weights/: ``rtseg models`` says
#: "built in" from the file itself, so this text is shown only when the file is absent
BUILTIN_WEIGHTS_MISSING = "built-in weights file missing from this install: reinstall rtseg or pass --weights PATH"

#: buffers that checkpoints saved by PyTorch < 0.4.1 do not have (BatchNorm counters; unused in eval)
OPTIONAL_SUFFIXES = (".num_batches_tracked",)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``{key: tensor}`` dict, or raise :class:`CheckpointError`."""
    if not os.path.exists(path):
        raise CheckpointError(f"weights file '{path}' not found")
    if os.path.isdir(path):
        raise CheckpointError(f"weights path '{path}' is a directory, expected a .pth file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"weights file '{path}' is empty (0 bytes), expected a PyTorch checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"weights file '{path}' is not a readable PyTorch checkpoint: {reason[:200]}") from None
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
