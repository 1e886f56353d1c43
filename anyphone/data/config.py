"""DataConfig: every knob :class:`anyphone.data.module.PhoneDataModule` reads, as a typed dataclass.

The command line (``PhoneDataModule.add_arguments``) takes its defaults from here, so a parser's
``parse_args([])`` and ``DataConfig()`` agree field by field. ``DataConfig.from_args(namespace)`` reads the
attributes it declares from a parsed Namespace (one it lacks keeps the default below), ``to_dict`` /
``from_dict`` turn it into plain JSON values and back (lhotse-style, like ``FbankConfig``).

This module also holds the small checks that the other typed configs (``anyphone.training.config``) share:
:func:`config_from_dict` refuses unknown keys and values of the wrong type with one line, :func:`normalise`
turns JSON values (lists, strings) into the declared types.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["DataConfig", "config_from_args", "config_from_dict", "convert_field", "normalise", "to_plain"]

C = TypeVar("C")


def _bad(where: str, name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{where}: {name}={value!r}, expected {expected}")


def convert_field(kind: str, value: Any, where: str, name: str) -> Any:
    """``value`` as the annotated type ``kind`` (the annotation's text). Numbers are checked, not converted, so
    an int default such as ``lr_batches=7500`` reaches the arithmetic exactly as the command line gives it."""
    optional = kind.endswith(" | None")
    if optional:
        if value is None:
            return None
        kind = kind.removesuffix(" | None")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _bad(where, name, value, "true or false")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _bad(where, name, value, "an integer")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise _bad(where, name, value, "a number")
    if kind == "str":
        if isinstance(value, (str, os.PathLike)):  # a folder given as a Path is its text
            return os.fspath(value)
        raise _bad(where, name, value, "a string")
    if kind == "Path":
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _bad(where, name, value, "a path")
    if kind == "tuple[str, ...]":
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
            return tuple(os.fspath(v) for v in value)
        raise _bad(where, name, value, "a list of strings")
    if kind == "tuple[float, float]":
        if (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            return tuple(float(v) for v in value)
        raise _bad(where, name, value, "two numbers")
    raise TypeError(f"{where}: field {name} has an annotation ({kind}) this module cannot check")


def normalise(config: Any, where: str) -> None:
    """Check every field of a (frozen) config dataclass against its annotation and store it in the declared
    type (a list becomes a tuple, a string path a Path). Raises ValueError, one line naming ``where``."""
    for f in fields(config):
        value = convert_field(str(f.type), getattr(config, f.name), where, f.name)
        object.__setattr__(config, f.name, value)


def config_from_dict(cls: type[C], data: Mapping[str, Any], what: str, where: str | None = None) -> C:
    """``cls(**data)`` after refusing unknown keys. Every error is one ValueError line that starts with
    ``where`` (e.g. the file the dict came from), when given, and names the config (``what``)."""
    prefix = f"{where}: {what}" if where else what
    if not isinstance(data, Mapping):
        keys, got = [f.name for f in fields(cls)], type(data).__name__
        raise ValueError(f"{prefix}: expected an object with the keys {keys}, got {got}")  # noqa: TRY004 (bad data)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{prefix}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    try:
        return cls(**dict(data))
    except ValueError as e:  # already "WHAT: field=value, expected ..."
        raise ValueError(f"{where}: {e}" if where else str(e)) from None


def config_from_args(cls: type[C], namespace: Any) -> C:
    """A config from the attributes of a parsed Namespace that ``cls`` declares; attributes it does not declare
    are not read, and a declared one the Namespace lacks (a parser without that flag) keeps the field default."""
    given = vars(namespace)
    return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})


def to_plain(config: Any) -> dict[str, Any]:
    """The fields as JSON values: nested configs by their ``to_dict``, tuples as lists, paths as strings,
    mappings as dicts."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        elif isinstance(value, (tuple, list)):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out


@dataclass(frozen=True)
class DataConfig:
    """Shar inputs, batching, augmentation and features of :class:`PhoneDataModule`.

    Each field is the flag of the same name (``max_duration`` is ``--max-duration``); see
    ``PhoneDataModule.add_arguments`` for the help texts. Sources are kept as the command line spells them:
    ``train_shar`` ``"DIR[:WEIGHT]"``, ``test_shar`` ``"NAME=DIR"`` (``anyphone.data.shar.parse_weighted_dir``
    and ``parse_named_dir`` take them apart). ``use_unsup_cr_ctc`` is the CR-CTC task's flag: with it the
    training filter keeps unlabelled cuts for the consistency term; every other task leaves it false.
    The features are ZIPA's fixed fbank (``anyphone.data.fbank_options``); only where they are computed is a
    knob (``fbank_on_device``).
    """

    # sources
    train_shar: tuple[str, ...] = ()
    dev_shar: tuple[str, ...] = ()
    test_shar: tuple[str, ...] = ()
    repeat_train: bool = False
    # trust and damage
    trust_data_commands: bool = False
    max_bad_shards: int = 10
    keep_unk_cuts: bool = False
    use_unsup_cr_ctc: bool = False
    # batching
    max_duration: float = 600.0
    num_buckets: int = 30
    bucket_buffer_size: int = 10000
    num_cuts_for_bins_estimate: int = 10000
    shuffle_buffer_size: int = 10000
    shuffle: bool = True
    drop_last: bool = True
    num_workers: int = 2
    min_duration: float = 0.2
    max_duration_per_cut: float = 30.0
    seed: int = 42
    # augmentation (training only)
    speed_perturb: bool = True
    volume_perturb_prob: float = 0.5
    noise_prob: float = 0.3
    snr_range: tuple[float, float] = (0.0, 30.0)
    noise_dir: str | None = None
    silence_pad_prob: float = 0.2
    empty_prob: float = 0.02
    enable_spec_aug: bool = False
    spec_aug_time_warp_factor: int = 80
    # features and transcripts
    fbank_on_device: bool = False
    remove_diacritics: bool = False

    def __post_init__(self) -> None:
        normalise(self, "data config")
        if self.max_bad_shards < 0:
            raise ValueError(
                f"data config: max_bad_shards={self.max_bad_shards} (--max-bad-shards), expected 0 or more"
            )
        lo, hi = self.snr_range
        object.__setattr__(self, "snr_range", (min(lo, hi), max(lo, hi)))

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> DataConfig:
        """A config from :meth:`to_dict`'s output; unknown keys or bad values raise one ValueError line (starting
        with ``where``, e.g. a file name, when given)."""
        return config_from_dict(cls, data, "data config", where)

    @classmethod
    def from_args(cls, namespace: Any) -> DataConfig:
        """The data flags of a parsed Namespace (see :func:`config_from_args`)."""
        return config_from_args(cls, namespace)
