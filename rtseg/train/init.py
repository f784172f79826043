"""Initialising networks for training without pretrained weights (none can be fetched here).

Shared by every family: backbone convolutions as torchvision's ResNet (Kaiming normal,
fan-out, ReLU), every other convolution as YOLACT's ``init_weights`` (Xavier uniform),
zero biases, norm layers at weight 1 / bias 0. Families add their own specifics (e.g. a
focal-loss prior on classification biases) after calling :func:`init_convs`.
"""

from __future__ import annotations

from torch import nn

_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)


def init_convs(model: nn.Module, backbone: nn.Module | None = None, *, skip_suffixes: tuple[str, ...] = ("conv_offset_mask",)) -> None:
    """Initialise ``model`` in place.

    Convolutions inside ``backbone``: Kaiming normal (fan-out, ReLU); all others: Xavier
    uniform; biases zero; BatchNorm / GroupNorm weight 1, bias 0. Modules whose name ends
    with one of ``skip_suffixes`` keep their values (DCN offset convs stay zero so they
    start as plain convolutions).
    """
    inside = set(backbone.modules()) if backbone is not None else set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if name.endswith(skip_suffixes):
                continue
            if module in inside:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _NORMS) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
