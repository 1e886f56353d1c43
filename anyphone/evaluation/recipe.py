"""The recipes' decode command line: what ``zipformer_crctc/decode.py`` and ``zipformer_transducer/decode.py``
run, and the weight-selection flags export.py shares.

:func:`get_decode_parser` builds icefall's decode flags (:func:`add_decode_arguments`), the data flags, ``--family``
and the chosen family's own; :func:`decode_main` turns the parsed Namespace into an
:class:`~anyphone.evaluation.config.EvaluationConfig` and runs :func:`anyphone.evaluation.run.evaluate`.
:func:`select_decoding_weights`, :func:`resolve_family` and :func:`model_config_for` are the service's helpers of
the same names for a parsed Namespace (export.py's).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from anyphone.evaluation import run
from anyphone.evaluation.config import EvaluationConfig, WeightChoice
from anyphone.families import family_names, get_family
from anyphone.families.base import ModelFamily
from anyphone.utils import str2bool

__all__ = ["add_checkpoint_arguments", "add_decode_arguments", "add_family_argument", "chosen_family",
           "decode_main", "decode_main_cli", "get_decode_parser", "model_config_for", "model_flag_names",
           "resolve_family", "select_decoding_weights"]


def _finite_float(value: str) -> float:
    try:
        out = float(value)
    except ValueError:
        out = math.nan
    if not math.isfinite(out):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return out


def add_checkpoint_arguments(g: argparse._ActionsContainer, verb: str = "Decode") -> None:
    """icefall's weight-selection flags (decode.py and export.py): --exp-dir, --epoch, --iter, --avg,
    --use-averaged-model, --checkpoint; the fields of :class:`WeightChoice`."""
    g.add_argument("--exp-dir", type=Path, default=Path("exp"), help="Checkpoints and config.json are read here.")
    g.add_argument("--epoch", type=int, default=0, help=f"{verb} epoch-N.pt (with --avg). Ignored if --iter > 0.")
    g.add_argument("--iter", type=int, default=0, help=f"{verb} checkpoint-N.pt (with --avg).")
    g.add_argument("--avg", type=int, default=1, help="Number of checkpoints to average, ending at --iter/--epoch.")
    g.add_argument(
        "--use-averaged-model",
        type=str2bool,
        default=True,
        help="Average with the running averaged model kept in checkpoints (needs the checkpoint --avg steps "
        "before the last one), which is better than averaging the raw weights.",
    )
    g.add_argument("--checkpoint", type=Path, default=None,
                   help=f"{verb} this file directly (a checkpoint or a plain state_dict such as a ZIPA .pth).")


def add_family_argument(g: argparse._ActionsContainer, default: str | None) -> None:
    """``--family``: the model family (a name of the registry in :mod:`anyphone.families`)."""
    g.add_argument("--family", type=str, default=default, choices=family_names(),
                   help="Model family. Default: " + (f"{default} (this recipe's); an exp dir's config.json and a "
                   "checkpoint's weights name their own" if default else "the one the exp dir's config.json or "
                   "the weights name"))


def chosen_family(default: str, argv: list[str] | None, exp_dir_flags: bool = False) -> str:
    """The family a command line asks for: ``--family``, else (``exp_dir_flags``: decode/export) the one the
    ``--exp-dir``/``--checkpoint`` config.json records, else ``default``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family", type=str, default=None)
    pre.add_argument("--exp-dir", type=Path, default=Path("exp"))
    pre.add_argument("--checkpoint", type=Path, default=None)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.family is not None:
        return known.family  # an unknown name is refused by the full parser's choices
    if exp_dir_flags:
        try:
            recorded = run.recorded_family(WeightChoice(exp_dir=known.exp_dir, checkpoint=known.checkpoint))
        except SystemExit:
            recorded = None  # the full run reports a broken config.json in its place
        if recorded in family_names():
            return recorded
    return default


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """decode.py's own flags (icefall's names): the weights, the tokens, the search, scoring and device; the
    fields of :class:`EvaluationConfig` other than the data and the model."""
    g = parser.add_argument_group("decoding (icefall names)")
    add_checkpoint_arguments(g)
    g.add_argument("--lang-dir", type=Path, default=Path("ipa_simplified"))
    g.add_argument("--decoding-method", type=str, default=None,
                   help="The family's search: CTC families ctc-greedy-search | ctc-prefix-beam-search; "
                   "transducer greedy_search | modified_beam_search (default: the family's greedy one)")
    g.add_argument("--beam-size", type=int, default=4)
    g.add_argument("--max-sym-per-frame", type=int, default=1)
    g.add_argument("--blank-penalty", type=_finite_float, default=0.0,
                   help="Subtracted from the blank's log-probability (CTC) or logit (transducer) before the "
                        "search; > 0 emits more phones, against deletions. Tune it on a dev set.")
    g.add_argument("--save-decode-options", type=str2bool, default=False,
                   help="Record --decoding-method, --beam-size, --blank-penalty and --max-sym-per-frame in "
                   "<exp-dir>/config.json, so that `anyphone recognize -m <exp-dir>` and load_model use them "
                   "(recognize's --emit is the same knob as --blank-penalty: emit = exp(blank_penalty)).")
    g.add_argument("--pfer", type=str2bool, default=True, help="Also compute PanPhon feature error rates.")
    g.add_argument("--device", type=str, default="auto")
    g.add_argument("--num-threads", type=int, default=0)


def model_flag_names(family: str | ModelFamily | None = None) -> list[str]:
    """The Namespace names of the model-shape flags (``add_model_arguments``) of ``family``, or of every
    registered family when None."""
    names: list[str] = []
    for fam in [family] if family is not None else family_names():
        scratch = argparse.ArgumentParser(add_help=False)
        get_family(fam).add_model_arguments(scratch)
        names += [n for n in vars(scratch.parse_args([])) if n not in names]
    return names


def _model_flags(args: argparse.Namespace) -> dict:
    given = vars(args)
    return {n: given[n] for n in model_flag_names() if given.get(n) is not None}


def get_decode_parser(family: str, description: str | None = None, argv: list[str] | None = None
                      ) -> argparse.ArgumentParser:
    """decode.py's flags, with the flags of the family that ``argv`` names (``--family``, or the exp dir's
    config.json; else ``family``)."""
    from anyphone.data.module import PhoneDataModule

    name = chosen_family(family, argv, exp_dir_flags=True) if argv is not None else family
    chosen = get_family(name if name in family_names() else family)
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decode_arguments(parser)
    PhoneDataModule.add_arguments(parser)
    add_family_argument(parser, None)
    chosen.add_arguments(parser)
    return parser


def decode_main(args: argparse.Namespace, family: str | ModelFamily | None = None) -> dict[str, dict[str, float]]:
    """decode.py's run: the Namespace as an :class:`EvaluationConfig` (a bad value is one line), then
    :func:`anyphone.evaluation.run.evaluate` (``family``: the recipe's, used when nothing else names one)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    try:
        cfg = EvaluationConfig.from_args(args, model_flags=model_flag_names())
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return run.evaluate(cfg, family)


def decode_main_cli(family: str, argv: list[str] | None = None, description: str | None = None
                    ) -> dict[str, dict[str, float]]:
    """decode.py: parse ``argv`` (default ``sys.argv[1:]``) and decode; ``family`` is the recipe's."""
    argv = sys.argv[1:] if argv is None else argv
    args = get_decode_parser(family, description, argv).parse_args(argv)
    return decode_main(args, family)


# ---- the service's helpers for a parsed Namespace (export.py) ------------------------------------------------
def select_decoding_weights(args: argparse.Namespace) -> tuple[dict, str]:
    """:func:`anyphone.evaluation.run.select_decoding_weights` of the weight flags."""
    return run.select_decoding_weights(WeightChoice.from_args(args))


def resolve_family(args: argparse.Namespace, default: str | ModelFamily | None, state_dict: dict | None = None
                   ) -> ModelFamily:
    """:func:`anyphone.evaluation.run.resolve_family` of the weight flags and ``--family``."""
    return run.resolve_family(WeightChoice.from_args(args), default, state_dict, asked=getattr(args, "family", None))


def model_config_for(args: argparse.Namespace, family: ModelFamily, state_dict: dict) -> tuple[object, dict]:
    """:func:`anyphone.evaluation.run.model_config_for` of the weight flags and the model flags given."""
    return run.model_config_for(WeightChoice.from_args(args), family, state_dict, _model_flags(args))
