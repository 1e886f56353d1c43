"""The decode service behind the recipes' decode.py: pick and average checkpoints, decode test sets, score.

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
from anyphone.models.presets import ZipformerConfig, config_from_args, model_flag_dests
from anyphone.utils import resolve_device, str2bool
from anyphone.weights.checkpoint import CheckpointMismatchError, load_model_weights
from anyphone.weights.config import build_model, config_from_state_dict, head_sizes
from anyphone.weights.expdir import (
    CONFIG_FILE,
    model_section,
    read_config,
    record_decode_options,
    select_state_dict,
)
from anyphone.weights.safe_load import UnsafeCheckpointError, model_family

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


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("decoding (icefall names)")
    add_checkpoint_arguments(g)
    g.add_argument("--lang-dir", type=Path, default=Path("ipa_simplified"))
    g.add_argument("--decoding-method", type=str, default=None,
                   help="crctc: ctc-greedy-search | ctc-prefix-beam-search; "
                   "transducer: greedy_search | modified_beam_search (default: the greedy one)")
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
            _, cfg, _ = config_from_state_dict(state_dict)
            if cfg.name in ("tiny", "small", "large"):
                return f"they are a {cfg.name} model: pass --model-size {cfg.name}"
        except (ValueError, KeyError, RuntimeError, AssertionError):
            pass  # no preset fits: the generic advice below
    return "pass the model flags it was trained with (--model-size, --encoder-dim, ...)"


def model_config_for(args: argparse.Namespace, family: str, state_dict: dict) -> tuple[ZipformerConfig, bool]:
    """The configuration to decode (or export) ``state_dict`` with, and whether a transducer has a CTC head.

    An exp dir describes itself: its ``config.json`` (or, for --checkpoint FILE, a ``FILE.json`` or
    ``config.json`` beside it) gives the model, so --model-size is not needed; given anyway and different, it
    is an error (one line). Without a config.json the model flags give it when any is passed, else the tensors
    (a ZIPA checkpoint needs no flag). The result is checked against every tensor's shape.
    """
    if args.checkpoint is not None:
        ckpt = Path(args.checkpoint)
        candidates = [ckpt.with_suffix(".json"), ckpt.parent / CONFIG_FILE]
    else:
        candidates = [Path(args.exp_dir) / CONFIG_FILE]
    where = next((p for p in candidates if p.is_file()), None)
    try:
        card = read_config(where) if where is not None else None
    except ValueError as e:
        raise SystemExit(str(e)) from None
    model = model_section(card)
    if card is not None and card.get("family", family) != family:
        raise SystemExit(f"{where}: the model is a {card['family']} model; decode and export it with "
                         f"zipformer_{card['family']}/")
    given_size = getattr(args, "model_size", None)
    if model is not None:
        cfg = ZipformerConfig.from_dict(model)
        if given_size is not None and given_size != cfg.name:
            raise SystemExit(f"{where}: the model was trained with --model-size {cfg.name}, not --model-size "
                             f"{given_size}; drop the flag (config.json describes the model)")
    elif given_size is not None or any(getattr(args, dest, None) is not None for dest in model_flag_dests()):
        cfg = config_from_args(args)
        found = model_family(state_dict)
        if found is not None:  # the output sizes are the tensors' (the flags describe the encoder)
            cfg = cfg.replace(**head_sizes(state_dict, found))
    else:
        cfg = None
    label = where if where is not None else (args.checkpoint or args.exp_dir)
    try:
        found, cfg, use_ctc = config_from_state_dict(state_dict, cfg)
    except ValueError as e:
        hint = _size_hint(state_dict) if model is None else f"{where} does not describe these weights"
        raise SystemExit(f"{label}: {_first_line(e)}; {hint}") from None
    if found != family:
        raise SystemExit(f"{label}: these weights are a {found} model; decode and export them with "
                         f"zipformer_{found}/")
    return cfg, use_ctc


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


def decode_main(args: argparse.Namespace, task) -> dict[str, dict[str, float]]:
    """Decode every --test-shar set with the weights and options the flags name; write and return the scores.

    The model is described by the exp dir's config.json (see :func:`model_config_for`); ``task`` (a family's
    task object: ``name``, ``decode``, ``output_downsampling_factor``) runs the search.
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
    options = decode_options_from_args(args, task.default_decoding_method)
    args.decoding_method = options.method  # the task's search reads its options from args
    tokenizer = IpaTokenizer.from_dir(args.lang_dir)
    sd, source = select_decoding_weights(args)
    cfg, use_ctc = model_config_for(args, task.name, sd)
    model = build_model(task.name, cfg.replace(vocab_size=tokenizer.vocab_size), use_ctc)
    try:
        load_model_weights(model, sd, source)
    except CheckpointMismatchError as e:  # the tokens, not the shapes checked above: vocab size
        raise SystemExit(f"{e}; --lang-dir {args.lang_dir} must hold the tokens it was trained with") from None
    model.to(device).eval()
    log.info("Decoding with %s (%s), %s parameters", source, options.method,
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
