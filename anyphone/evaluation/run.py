"""The decode service behind the recipes' decode.py: pick and average checkpoints, decode test sets with the
model family's search, score.

The family comes from ``--family``, else the exp dir's ``config.json``, else the weights' key names, else the
recipe's own: an exp dir trained with ``train.py --family X`` decodes and exports with no flag.

Writes, icefall style, into <exp-dir>/<decoding-method>/:
  recogs-<test-set>-<suffix>.txt   reference and hypothesis per cut
  errs-<test-set>-<suffix>.txt     PER with insertions/deletions/substitutions, alignments, top confusions
  per-language-<test-set>-<suffix>.txt
  per-summary-<suffix>.txt         PER and PFER of every test set
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch
from torch import nn

from anyphone.decoding.options import DecodeOptions
from anyphone.families import UnknownFamilyError, detect_family, family_names, get_family
from anyphone.families.base import ModelFamily
from anyphone.utils import resolve_device, str2bool
from anyphone.weights.checkpoint import CheckpointMismatchError, load_model_weights
from anyphone.weights.expdir import (
    CONFIG_FILE,
    model_section,
    read_config,
    record_decode_options,
    select_state_dict,
)
from anyphone.weights.safe_load import UnsafeCheckpointError

log = logging.getLogger("anyphone.decode")


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
    --use-averaged-model, --checkpoint; read by :func:`select_decoding_weights`."""
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
    import sys

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family", type=str, default=None)
    pre.add_argument("--exp-dir", type=Path, default=Path("exp"))
    pre.add_argument("--checkpoint", type=Path, default=None)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.family is not None:
        return known.family  # an unknown name is refused by the full parser's choices
    if exp_dir_flags:
        try:
            recorded = recorded_family(known)
        except SystemExit:
            recorded = None  # the full run reports a broken config.json in its place
        if recorded in family_names():
            return recorded
    return default


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
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


def checkpoint_suffix(args: argparse.Namespace) -> str:
    if args.checkpoint is not None:
        return Path(args.checkpoint).stem
    base = f"iter-{args.iter}" if args.iter > 0 else f"epoch-{args.epoch}"
    return f"{base}-avg-{args.avg}" + ("-use-averaged-model" if args.use_averaged_model else "")


def load_decoding_weights(args: argparse.Namespace, model: nn.Module) -> str:
    """Load the weights that --iter/--epoch/--avg/--use-averaged-model/--checkpoint name; returns a label.

    Every problem ends the program with one line (SystemExit) naming the file: a checkpoint that is missing,
    corrupt or holds pickled objects other than tensors (refused, never unpickled), or weights of another shape
    than the model flags give (with the first tensor that differs and the --model-size they look like).
    """
    sd, source = select_decoding_weights(args)
    try:
        load_model_weights(model, sd, source)
    except CheckpointMismatchError as e:
        raise SystemExit(f"{e}; {_size_hint(sd)}") from None
    return checkpoint_suffix(args)


def select_decoding_weights(args: argparse.Namespace) -> tuple[dict, str]:
    """(state_dict, where it came from) of the decode flags (:func:`anyphone.weights.expdir.select_state_dict`);
    every problem is a one-line SystemExit."""
    if args.checkpoint is None and args.iter <= 0 and args.epoch <= 0:
        raise SystemExit("give --iter N or --epoch N (or --checkpoint FILE)")
    try:
        return select_state_dict(args.exp_dir, iter=max(0, args.iter),
                                 epoch=args.epoch if args.iter <= 0 else 0, avg=args.avg,
                                 use_averaged_model=args.use_averaged_model, checkpoint=args.checkpoint)
    except (UnsafeCheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(_first_line(e)) from None


def _first_line(e: BaseException) -> str:
    text = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _size_hint(state_dict) -> str:
    """What to pass for weights that do not fit the model flags: the size preset they match, if any."""
    if state_dict is not None:
        try:
            cfg, _ = detect_family(state_dict).config_from_state_dict(state_dict)
            if getattr(cfg, "name", None) in ("tiny", "small", "large"):
                return f"they are a {cfg.name} model: pass --model-size {cfg.name}"
        except (ValueError, KeyError, RuntimeError, AssertionError):
            pass  # no preset fits: the generic advice below
    return "pass the model flags it was trained with (--model-size, --encoder-dim, ...)"


def _config_card(args: argparse.Namespace) -> tuple[Path | None, dict | None]:
    """The config.json describing the weights the flags name: the exp dir's, or for --checkpoint FILE a
    ``FILE.json`` or ``config.json`` beside it; and its contents."""
    if getattr(args, "checkpoint", None) is not None:
        ckpt = Path(args.checkpoint)
        candidates = [ckpt.with_suffix(".json"), ckpt.parent / CONFIG_FILE]
    else:
        candidates = [Path(args.exp_dir) / CONFIG_FILE]
    where = next((p for p in candidates if p.is_file()), None)
    try:
        return where, (read_config(where) if where is not None else None)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def recorded_family(args: argparse.Namespace) -> str | None:
    """The family named by the config.json of the weights the flags name (None without one)."""
    _, card = _config_card(args)
    name = card.get("family") if card is not None else None
    return name if isinstance(name, str) else None


def resolve_family(args: argparse.Namespace, default: str | ModelFamily | None, state_dict: dict | None = None
                   ) -> ModelFamily:
    """The family to decode (or export) with: ``--family``, else config.json's, else the weights', else
    ``default``. A ``--family`` that contradicts config.json or the weights is a one-line SystemExit."""
    where, card = _config_card(args)
    asked = getattr(args, "family", None)
    recorded = card.get("family") if card is not None else None
    label = where if where is not None else (getattr(args, "checkpoint", None) or args.exp_dir)
    try:
        if recorded is not None:
            family = get_family(recorded)
        elif state_dict is not None:
            try:
                family = detect_family(state_dict)
            except ValueError:
                family = get_family(asked or default)
        else:
            family = get_family(asked or default)
    except UnknownFamilyError as e:
        raise SystemExit(f"{label}: {e}") from None
    if asked is not None and asked != family.name and asked not in family.aliases and (
            recorded is not None or state_dict is not None):
        raise SystemExit(f"{label}: the model is a {family.name} model, not --family {asked}; drop the flag "
                         "(the exp dir describes the model)")
    return family


def model_config_for(args: argparse.Namespace, family: ModelFamily, state_dict: dict) -> tuple[object, dict]:
    """The configuration to decode (or export) ``state_dict`` with, and the family's build options (a
    transducer's joint CTC head).

    An exp dir describes itself: its ``config.json`` (or, for --checkpoint FILE, a ``FILE.json`` or
    ``config.json`` beside it) gives the model, so --model-size is not needed; given anyway and different, it
    is an error (one line). Without a config.json the model flags give it when any is passed, else the tensors
    (a ZIPA checkpoint needs no flag). The result is checked against every tensor's shape.
    """
    where, card = _config_card(args)
    model = model_section(card)
    if card is not None and card.get("family", family.name) != family.name:
        raise SystemExit(f"{where}: the model is a {card['family']} model, not a {family.name} one")
    given_size = getattr(args, "model_size", None)
    if model is not None:
        try:
            cfg = family.config_from_dict(model)
        except (TypeError, ValueError, KeyError) as e:
            raise SystemExit(f"{where}: not a {family.name} model configuration ({_first_line(e)})") from None
        if given_size is not None and given_size != getattr(cfg, "name", given_size):
            raise SystemExit(f"{where}: the model was trained with --model-size {cfg.name}, not --model-size "
                             f"{given_size}; drop the flag (config.json describes the model)")
    elif family.model_flags_given(args):
        # the output sizes are the tensors' (the flags describe the encoder)
        try:
            cfg = family.config_for_weights(args, state_dict)
        except KeyError:  # weights of another family: the check below names them
            cfg = family.config_from_args(args)
    else:
        cfg = None
    label = where if where is not None else (args.checkpoint or args.exp_dir)
    if not family.recognises(state_dict):
        try:
            found = detect_family(state_dict).name
        except ValueError as e:
            raise SystemExit(f"{label}: {_first_line(e)}") from None
        raise SystemExit(f"{label}: these weights are a {found} model, not a {family.name} one; decode and export "
                         f"them with --family {found}")
    try:
        cfg, options = family.config_from_state_dict(state_dict, cfg)
    except ValueError as e:
        hint = _size_hint(state_dict) if model is None else f"{where} does not describe these weights"
        raise SystemExit(f"{label}: {_first_line(e)}; {hint}") from None
    return cfg, options


@torch.no_grad()
def decode_dataset(dl, model: nn.Module, task, args, tokenizer, device) -> list[tuple[str, str, str, str]]:
    """Returns (cut_id, ref_text, hyp_text, language) for every cut of the loader."""
    from tqdm import tqdm

    results = []
    for batch in tqdm(dl, desc="decoding", unit="batch", leave=False):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        hyps = task.decode(model, batch, args)
        langs = batch.get("languages") or [""] * len(hyps)
        for cut_id, ref, hyp, lang in zip(batch["cut_ids"], batch["texts"], hyps, langs):
            results.append((cut_id, ref, tokenizer.decode(hyp), lang or ""))
    return results


def decode_options_from_args(args: argparse.Namespace, family_default: str) -> DecodeOptions:
    """The :class:`DecodeOptions` of decode.py's flags (the family's greedy search when no method is given)."""
    try:
        return DecodeOptions(method=args.decoding_method or family_default, beam_size=args.beam_size,
                             blank_penalty=args.blank_penalty, max_sym_per_frame=args.max_sym_per_frame)
    except ValueError as e:
        raise SystemExit(f"decode options: {e}") from None


def decode_main(args: argparse.Namespace, family: str | ModelFamily | None = None) -> dict[str, dict[str, float]]:
    """Decode every --test-shar set with the weights and options the flags name; write and return the scores.

    The model is described by the exp dir's config.json (see :func:`model_config_for`), its family by
    :func:`resolve_family` (``family``: the recipe's, used when nothing else names one); the family's ``decode``
    runs the search.
    """
    from anyphone.data.module import PhoneDataModule
    from anyphone.decoding import scoring
    from anyphone.text.tokenizer import IpaTokenizer

    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"--device: {e}") from None
    tokenizer = IpaTokenizer.from_dir(args.lang_dir)
    sd, source = select_decoding_weights(args)
    task = resolve_family(args, family, sd)
    options = decode_options_from_args(args, task.default_decoding_method)
    if options.method not in task.decoding_methods:
        raise SystemExit(f"--decoding-method {options.method}: {task.name} models decode with "
                         f"{' or '.join(task.decoding_methods)}")
    args.decoding_method = options.method  # the family's search reads its options from args
    cfg, build_options = model_config_for(args, task, sd)
    model = task.build(cfg.replace(vocab_size=tokenizer.vocab_size), **build_options)
    try:
        load_model_weights(model, sd, source)
    except CheckpointMismatchError as e:  # the tokens, not the shapes checked above: vocab size
        raise SystemExit(f"{e}; --lang-dir {args.lang_dir} must hold the tokens it was trained with") from None
    model.to(device).eval()
    log.info("Decoding %s model %s (%s), %s parameters", task.name, source, options.method,
             f"{sum(p.numel() for p in model.parameters()):,}")

    suffix = checkpoint_suffix(args)
    res_dir = Path(args.exp_dir) / options.method
    res_dir.mkdir(parents=True, exist_ok=True)
    datamodule = PhoneDataModule(args, output_downsampling_factor=task.output_downsampling_factor)
    summary: dict[str, dict[str, float]] = {}
    for name, dl in datamodule.test_dataloaders(tokenizer).items():
        results = decode_dataset(dl, model, task, args, tokenizer, device)
        scoring.write_recogs(res_dir / f"recogs-{name}-{suffix}.txt", results)
        report = scoring.write_errs(res_dir / f"errs-{name}-{suffix}.txt", name, results, pfer=args.pfer)
        scoring.write_language_table(res_dir / f"per-language-{name}-{suffix}.txt", report)
        summary[name] = {"PER": report.overall.per, **({"PFER": report.overall.pfer} if args.pfer else {})}
        log.info("%s: PER %.2f%%%s over %d cuts", name, report.overall.per,
                 f", PFER {report.overall.pfer:.2f}%" if args.pfer else "", len(results))
    scoring.write_summary(res_dir / f"per-summary-{suffix}.txt", summary)
    print((res_dir / f"per-summary-{suffix}.txt").read_text())
    if args.save_decode_options:
        path = record_decode_options(args.exp_dir, options.to_dict())
        log.info("Recorded the decode options in %s: %s", path, options.to_dict())
    return summary
