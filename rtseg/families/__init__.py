"""Model families: what turns a config into a network, its pre/post-processing and its loss.

A plain dict (no registry magic): ``FAMILIES[cfg.family]``. Each family module composes the
parts that live in :mod:`rtseg.models` (networks, configs), :mod:`rtseg.postprocess` (pure
tensor functions) and :mod:`rtseg.train` (losses) into one :class:`Family`.

Not imported by :mod:`rtseg.models` (it imports them): use it from the segmenter, the
trainer and the CLI.
"""

from __future__ import annotations

from rtseg.families.base import Family, ModelConfig
from rtseg.families.centermask import CENTERMASK
from rtseg.families.solov2 import SOLOV2
from rtseg.families.yolact import YOLACT

FAMILIES: dict[str, Family] = {
    YOLACT.name: YOLACT,
    CENTERMASK.name: CENTERMASK,
    SOLOV2.name: SOLOV2,
}


def family_of(cfg: ModelConfig) -> Family:
    """The family of a model config (``cfg.family``)."""
    try:
        return FAMILIES[cfg.family]
    except KeyError:
        raise ValueError(f"config {cfg.name!r} names family {cfg.family!r}, expected one of {', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "Family", "ModelConfig", "family_of"]
