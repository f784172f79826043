"""Model families: what turns a config into a network, its pre/post-processing and its loss.

A plain dict (no registry magic): ``FAMILIES[cfg.family]``. Each family owns its whole path in
its own package ``rtseg/families/<name>/``: ``network.py`` (config and network), ``preprocess.py``
(geometry and preprocessing: the official test pipeline), ``postprocess.py`` (pure tensor
functions), ``ops.py`` (its parameters of rtseg's generic CUDA kernels), ``loss.py`` and, in
``__init__.py``, its :class:`Family` and variants. Only the shared parts live elsewhere
(backbones and checkpoint loading in :mod:`rtseg.models`, :mod:`rtseg.postprocess`'s ops and
host copy, :mod:`rtseg.train.init`). Nothing outside these packages branches on a family name
(``tests/test_families.py``); a new family is a new package and one line below.

:data:`rtseg.models.MODELS` is built from :attr:`Family.variants` on first use.
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
