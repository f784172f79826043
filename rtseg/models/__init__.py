"""The model variants rtseg knows, by name: a plain dict, no registry magic.

Each family registers its own variants (``rtseg/families/<name>/__init__.py``,
:attr:`rtseg.families.base.Family.variants`); :data:`MODELS` is their union, built on first use
(the families' networks import the shared parts of this package: backbones, checkpoint loading,
so this package cannot import the families while it initialises). Official variants keep
upstream's names, input sizes and layer shapes exactly; the ``*_resnet18_*`` / ``*_384`` variants
are rtseg's own small models for real-time use on a CPU, trained on the synthetic shapes set.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from rtseg.defaults import DEFAULT_MODEL  # what ``rtseg run`` uses without --model
from rtseg.errors import ConfigError
from rtseg.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES  # the classes of rtseg's own small models

__all__ = ["DEFAULT_MODEL", "MODELS", "SYNTHETIC_CLASSES", "get_config"]

if TYPE_CHECKING:
    from rtseg.families.base import ModelConfig

    #: every variant of every family, by name (configs are frozen dataclasses with a ``family``)
    MODELS: dict[str, ModelConfig]


def _models() -> dict[str, ModelConfig]:
    from rtseg.families import FAMILIES

    models: dict[str, ModelConfig] = {}
    for family in FAMILIES.values():
        for cfg in family.variants:
            if cfg.name in models:
                raise RuntimeError(f"model name {cfg.name!r} is registered by families {models[cfg.name].family!r} "
                                   f"and {cfg.family!r}: variant names must be unique")
            models[cfg.name] = cfg
    return models


def _registry() -> dict[str, ModelConfig]:
    models = globals().get("MODELS")
    if models is None:
        models = globals()["MODELS"] = _models()
    return models


def __getattr__(name: str) -> Any:
    """``MODELS``, built from the families on first use."""
    if name == "MODELS":
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_config(name: str) -> ModelConfig:
    """The config of a model variant; unknown names raise :class:`ConfigError` with suggestions."""
    models = _registry()
    try:
        return models[name]
    except KeyError:
        close = difflib.get_close_matches(name, models, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(models)}"
        raise ConfigError(f"unknown model '{name}'{hint} (see 'rtseg models')") from None
