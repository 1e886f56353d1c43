"""Model families: THE registry of family names, and finding a family by name, by state_dict or by config.

Every family is a module of this package defining ``FAMILY`` (a :class:`anyphone.families.base.ModelFamily`
subclass); ``REGISTRY`` names them, one line each. Importing this package imports no torch: a family's module
is imported when the family is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anyphone.families.base import ModelFamily

__all__ = ["REGISTRY", "UnknownFamilyError", "config_from_state_dict", "detect_family", "family_names",
           "get_family", "infer_family_size"]

# name -> module; the order is the order of detection (the first family that recognises a state_dict wins)
REGISTRY: dict[str, str] = {
    "crctc": "anyphone.families.crctc",
    "transducer": "anyphone.families.transducer",
    "blstm_ctc": "anyphone.families.blstm_ctc",
}


class UnknownFamilyError(ValueError):
    """A family name that is not in the registry (one line naming the known ones)."""


def family_names() -> list[str]:
    """The registered family names, in registry order."""
    return list(REGISTRY)


def _family_class(name: str) -> type[ModelFamily]:
    return importlib.import_module(REGISTRY[name]).FAMILY


def get_family(name: str | ModelFamily) -> ModelFamily:
    """A fresh family object of ``name`` (a registered name or a deprecated alias such as the ONNX model_type
    "ctc"); a family object is returned as it is.

    Raises UnknownFamilyError (a ValueError) naming the known families.
    """
    if not isinstance(name, str):
        return name
    if name in REGISTRY:
        return _family_class(name)()
    for known in REGISTRY:
        cls = _family_class(known)
        if name in cls.aliases:
            return cls()
    raise UnknownFamilyError(f"unknown model family {name!r}; known families: {', '.join(REGISTRY)}")


def detect_family(state_dict: Mapping[str, Any]) -> ModelFamily:
    """The family whose model has these weights (by their key names).

    Raises ValueError (one line) when no family recognises them.
    """
    for name in REGISTRY:
        family = _family_class(name)()
        if family.recognises(state_dict):
            return family
    raise ValueError(f"the state_dict is no model of a known family ({', '.join(REGISTRY)}); "
                     f"first keys: {list(state_dict)[:5]}")


def config_from_state_dict(state_dict: Mapping[str, Any], config: Any = None) -> tuple[str, Any, bool]:
    """(family name, config, has a joint CTC head) of a state_dict, so users never pass ``--model-size``.

    ``config`` (a config, its dict or a preset name) is checked rather than inferred. The family's own
    :meth:`~anyphone.families.base.ModelFamily.config_from_state_dict` gives the config and build options; this
    is the short form of the public API (``anyphone.inference.api.config_from_state_dict``).

    Raises:
        ValueError: weights of no known family, or shapes that fit no configuration (names the first mismatch).
    """
    family = detect_family(state_dict)
    cfg, options = family.config_from_state_dict(state_dict, config)
    return family.name, cfg, bool(options.get("use_ctc", False))


def infer_family_size(state_dict: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(family name, ZIPA release size) of a state_dict, each None when it cannot be told: the family by
    :func:`detect_family`, the size ("small"/"large") by the family (:meth:`ModelFamily.published_size`)."""
    try:
        family = detect_family(state_dict)
    except ValueError:
        return None, None
    return family.name, family.published_size(state_dict)
