"""EvaluationConfig: everything the decode service reads, as typed dataclasses (lhotse-style ``to_dict`` /
``from_dict``), so that Python code runs :func:`anyphone.evaluation.run.evaluate` with no command line.

* :class:`WeightChoice`: which weights, with icefall's flags (``--exp-dir``, ``--iter``, ``--epoch``,
  ``--avg``, ``--use-averaged-model``, ``--checkpoint``); export.py chooses its weights with it too.
* :class:`EvaluationConfig`: the weights, the tokens (``lang_dir``), how to search
  (:class:`anyphone.decoding.options.DecodeOptions`), what to score and where to run, the test sets
  (:class:`anyphone.data.config.DataConfig`), the ``--family`` asked for and the model-shape flags given.

``from_args`` reads a Namespace parsed by decode.py's parser (:mod:`anyphone.evaluation.recipe`); a parser
that lacks a flag leaves its field at the default below, and the defaults are the flags' defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyphone.data.config import (
    DataConfig,
    config_from_args,
    config_from_dict,
    convert_field,
    normalise,
    to_plain,
)
from anyphone.decoding.options import DecodeOptions

__all__ = ["EvaluationConfig", "WeightChoice"]

# decode.py's flag (Namespace name) -> DecodeOptions field
_DECODE_FLAGS = {"decoding_method": "method", "beam_size": "beam_size", "blank_penalty": "blank_penalty",
                 "max_sym_per_frame": "max_sym_per_frame"}


@dataclass(frozen=True)
class WeightChoice:
    """Which weights to load (icefall's decode flags; see
    :func:`anyphone.weights.expdir.select_state_dict`).

    ``checkpoint``: that file (a training checkpoint or a plain state_dict such as a ZIPA ``.pth``); else
    ``checkpoint-{iter}.pt`` (``iter`` > 0) or ``epoch-{epoch}.pt`` of ``exp_dir``, averaged over ``avg``
    intervals (with the running averages kept in the checkpoints when ``use_averaged_model``).
    """

    exp_dir: Path = Path("exp")
    iter: int = 0
    epoch: int = 0
    avg: int = 1
    use_averaged_model: bool = True
    checkpoint: Path | None = None

    def __post_init__(self) -> None:
        normalise(self, "weight choice")

    @property
    def label(self) -> str:
        """The results' file-name suffix: ``iter-8-avg-2-use-averaged-model``, ``epoch-30-avg-5``, or the
        checkpoint file's stem."""
        if self.checkpoint is not None:
            return self.checkpoint.stem
        base = f"iter-{self.iter}" if self.iter > 0 else f"epoch-{self.epoch}"
        return f"{base}-avg-{self.avg}" + ("-use-averaged-model" if self.use_averaged_model else "")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> WeightChoice:
        return config_from_dict(cls, data, "weight choice", where)

    @classmethod
    def from_args(cls, namespace: Any) -> WeightChoice:
        """The weight flags of a parsed Namespace (see :func:`anyphone.data.config.config_from_args`)."""
        return config_from_args(cls, namespace)


_SCALARS = {"lang_dir": "Path", "pfer": "bool", "device": "str", "num_threads": "int",
            "save_decode_options": "bool", "family": "str | None"}


@dataclass(frozen=True)
class EvaluationConfig:
    """What :func:`anyphone.evaluation.run.evaluate` reads.

    weights: the weights to decode (:class:`WeightChoice`).
    lang_dir: the tokenizer folder (``tokens.txt``) the model was trained with.
    decode: the search; ``decode.method`` None is the family's greedy search.
    pfer: also score PanPhon feature error rates.
    device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...; num_threads: torch's CPU threads (0: torch's default).
    save_decode_options: record ``decode`` in ``<exp_dir>/config.json`` (read by ``anyphone recognize -m``).
    data: the test sets (``data.test_shar``, ``"NAME=DIR"``) and how they are batched.
    family: the family asked for (``--family``); None: the one config.json or the weights name, else
        :func:`evaluate`'s default. Asking for another than they name is an error.
    model_flags: the model-shape flags given, by their Namespace names (``{"model_size": "tiny",
        "encoder_dim": "48,64,64,96,64,48"}``), valued as the command line gives them; the family turns them into
        its configuration. Used only for weights without a config.json; empty: the tensors describe the model.
    """

    weights: WeightChoice = field(default_factory=WeightChoice)
    lang_dir: Path = Path("ipa_simplified")
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    pfer: bool = True
    device: str = "auto"
    num_threads: int = 0
    save_decode_options: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    family: str | None = None
    model_flags: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = "evaluation config"
        parts = (("weights", WeightChoice, WeightChoice.from_dict), ("data", DataConfig, DataConfig.from_dict),
                 ("decode", DecodeOptions, lambda d: DecodeOptions.from_dict(d, f"{where}: decode")))
        for name, kind, from_dict in parts:
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = from_dict(value)
            elif not isinstance(value, kind):
                raise ValueError(f"{where}: {name}={value!r}, expected a {kind.__name__} or its dict")  # noqa: TRY004
            object.__setattr__(self, name, value)
        for name, kind in _SCALARS.items():
            object.__setattr__(self, name, convert_field(kind, getattr(self, name), where, name))
        flags = self.model_flags
        if not isinstance(flags, Mapping) or not all(
                isinstance(k, str) and (v is None or isinstance(v, (str, int, float))) for k, v in flags.items()):
            raise ValueError(f"{where}: model_flags={flags!r}, expected an object of flag names and their values")
        object.__setattr__(self, "model_flags", {k: v for k, v in flags.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> EvaluationConfig:
        """A config from :meth:`to_dict`'s output (keys left out keep their defaults); unknown keys or bad
        values raise one ValueError line (starting with ``where``, e.g. a file name, when given)."""
        return config_from_dict(cls, data, "evaluation config", where)

    @classmethod
    def from_args(cls, namespace: Any, model_flags: Iterable[str] = ()) -> EvaluationConfig:
        """The config of a Namespace parsed by decode.py's parser.

        ``model_flags``: the Namespace names of the model-shape flags (the face knows them:
        :func:`anyphone.evaluation.recipe.model_flag_names`); those given (not None) are kept. Raises
        ValueError, one line (``decode options: ...`` for a bad search option).
        """
        given = vars(namespace)
        try:
            decode = DecodeOptions(**{f: given[a] for a, f in _DECODE_FLAGS.items() if a in given})
        except ValueError as e:
            raise ValueError(f"decode options: {e}") from None
        return cls(weights=WeightChoice.from_args(namespace), decode=decode, data=DataConfig.from_args(namespace),
                   model_flags={n: given[n] for n in model_flags if given.get(n) is not None},
                   **{n: given[n] for n in _SCALARS if n in given})
