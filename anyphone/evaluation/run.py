"""The decode service behind the recipes' decode.py: pick and average checkpoints, decode test sets with the
model family's search, score. It takes typed values (:mod:`anyphone.evaluation.config`); the command line
is :mod:`anyphone.evaluation.recipe`.

The family is the one asked for (``EvaluationConfig.family``, ``--family``), else the exp dir's
``config.json``'s, else the weights' key names', else the recipe's own: an exp dir trained with
``train.py --family X`` decodes and exports with no flag.

:func:`evaluate` writes, icefall style, into <exp-dir>/<decoding-method>/:
  recogs-<test-set>-<suffix>.txt   reference and hypothesis per cut
  errs-<test-set>-<suffix>.txt     PER with insertions/deletions/substitutions, alignments, top confusions
  per-language-<test-set>-<suffix>.txt
  per-summary-<suffix>.txt         PER and PFER of every test set
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from anyphone.decoding.options import DecodeOptions
from anyphone.evaluation.config import EvaluationConfig, WeightChoice
from anyphone.families import UnknownFamilyError, detect_family, get_family
from anyphone.families.base import ModelFamily
from anyphone.utils import resolve_device
from anyphone.weights.checkpoint import CheckpointMismatchError, load_model_weights
from anyphone.weights.expdir import (
    CONFIG_FILE,
    model_section,
    read_config,
    record_decode_options,
    select_state_dict,
)
from anyphone.weights.safe_load import UnsafeCheckpointError

__all__ = ["decode_dataset", "evaluate", "load_decoding_weights", "model_config_for", "recorded_family",
           "resolve_family", "select_decoding_weights"]

log = logging.getLogger("anyphone.decode")


def load_decoding_weights(weights: WeightChoice, model: nn.Module) -> str:
    """Load the weights ``weights`` names into ``model``; returns their label (:attr:`WeightChoice.label`).

    Every problem ends the program with one line (SystemExit) naming the file: a checkpoint that is missing,
    corrupt or holds pickled objects other than tensors (refused, never unpickled), or weights of another shape
    than the model (with the first tensor that differs and the --model-size they look like).
    """
    sd, source = select_decoding_weights(weights)
    try:
        load_model_weights(model, sd, source)
    except CheckpointMismatchError as e:
        raise SystemExit(f"{e}; {_size_hint(sd)}") from None
    return weights.label


def select_decoding_weights(weights: WeightChoice) -> tuple[dict, str]:
    """(state_dict, where it came from) of ``weights`` (:func:`anyphone.weights.expdir.select_state_dict`);
    every problem is a one-line SystemExit."""
    if weights.checkpoint is None and weights.iter <= 0 and weights.epoch <= 0:
        raise SystemExit("give --iter N or --epoch N (or --checkpoint FILE)")
    try:
        return select_state_dict(weights.exp_dir, iter=max(0, weights.iter),
                                 epoch=weights.epoch if weights.iter <= 0 else 0, avg=weights.avg,
                                 use_averaged_model=weights.use_averaged_model, checkpoint=weights.checkpoint)
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


def _config_card(weights: WeightChoice) -> tuple[Path | None, dict | None]:
    """The config.json describing the weights ``weights`` names: the exp dir's, or for a checkpoint file a
    ``FILE.json`` or ``config.json`` beside it; and its contents."""
    if weights.checkpoint is not None:
        candidates = [weights.checkpoint.with_suffix(".json"), weights.checkpoint.parent / CONFIG_FILE]
    else:
        candidates = [weights.exp_dir / CONFIG_FILE]
    where = next((p for p in candidates if p.is_file()), None)
    try:
        return where, (read_config(where) if where is not None else None)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def recorded_family(weights: WeightChoice) -> str | None:
    """The family named by the config.json of the weights ``weights`` names (None without one)."""
    _, card = _config_card(weights)
    name = card.get("family") if card is not None else None
    return name if isinstance(name, str) else None


def resolve_family(weights: WeightChoice, default: str | ModelFamily | None, state_dict: dict | None = None,
                   asked: str | None = None) -> ModelFamily:
    """The family to decode (or export) with: ``asked`` (``--family``), else config.json's, else the weights',
    else ``default``. An ``asked`` family that contradicts config.json or the weights is a one-line
    SystemExit."""
    where, card = _config_card(weights)
    recorded = card.get("family") if card is not None else None
    label = where if where is not None else (weights.checkpoint or weights.exp_dir)
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


def model_config_for(weights: WeightChoice, family: ModelFamily, state_dict: dict,
                     model_flags: Mapping[str, Any] | None = None) -> tuple[object, dict]:
    """The configuration to decode (or export) ``state_dict`` with, and the family's build options (a
    transducer's joint CTC head).

    An exp dir describes itself: its ``config.json`` (or, for a checkpoint file, a ``FILE.json`` or
    ``config.json`` beside it) gives the model, so ``model_flags`` are not needed; a ``model_size`` among them
    that differs is an error (one line). Without a config.json the model flags (``{"model_size": "tiny",
    ...}``, read by the family as it reads the command line) give it when any is given, else the tensors (a
    ZIPA checkpoint needs no flag). The result is checked against every tensor's shape.
    """
    flags = SimpleNamespace(**(model_flags or {}))  # the family reads its flags by attribute
    where, card = _config_card(weights)
    model = model_section(card)
    if card is not None and card.get("family", family.name) != family.name:
        raise SystemExit(f"{where}: the model is a {card['family']} model, not a {family.name} one")
    given_size = getattr(flags, "model_size", None)
    if model is not None:
        try:
            cfg = family.config_from_dict(model)
        except (TypeError, ValueError, KeyError) as e:
            raise SystemExit(f"{where}: not a {family.name} model configuration ({_first_line(e)})") from None
        if given_size is not None and given_size != getattr(cfg, "name", given_size):
            raise SystemExit(f"{where}: the model was trained with --model-size {cfg.name}, not --model-size "
                             f"{given_size}; drop the flag (config.json describes the model)")
    elif family.model_flags_given(flags):
        # the output sizes are the tensors' (the flags describe the encoder)
        try:
            cfg = family.config_for_weights(flags, state_dict)
        except KeyError:  # weights of another family: the check below names them
            cfg = family.config_from_args(flags)
    else:
        cfg = None
    label = where if where is not None else (weights.checkpoint or weights.exp_dir)
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
def decode_dataset(dl, model: nn.Module, family: ModelFamily, options: DecodeOptions, tokenizer, device
                   ) -> list[tuple[str, str, str, str]]:
    """Decode every batch of ``dl`` with ``family.decode(model, batch, options)``; returns (cut_id, ref_text,
    hyp_text, language) for every cut of the loader."""
    from tqdm import tqdm

    results = []
    for batch in tqdm(dl, desc="decoding", unit="batch", leave=False):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        hyps = family.decode(model, batch, options)
        langs = batch.get("languages") or [""] * len(hyps)
        for cut_id, ref, hyp, lang in zip(batch["cut_ids"], batch["texts"], hyps, langs):
            results.append((cut_id, ref, tokenizer.decode(hyp), lang or ""))
    return results


def evaluate(cfg: EvaluationConfig, family: str | ModelFamily | None = None) -> dict[str, dict[str, float]]:
    """Decode every test set of ``cfg.data.test_shar`` with the weights and search ``cfg`` names; write the
    results (see the module docstring), print the summary table and return ``{test_set: {"PER": ..,
    "PFER": ..}}`` (percentages; PFER with ``cfg.pfer``).

    The model is described by the exp dir's config.json (see :func:`model_config_for`), its family by
    :func:`resolve_family` (``family``: the recipe's, used when nothing else names one); the family's
    ``decode`` runs the search (``cfg.decode.method`` None: the family's default). Every problem with the
    inputs is a one-line SystemExit.
    """
    from anyphone.data.module import PhoneDataModule
    from anyphone.decoding import scoring
    from anyphone.text.tokenizer import IpaTokenizer

    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise SystemExit(f"--device: {e}") from None
    tokenizer = IpaTokenizer.from_dir(cfg.lang_dir)
    sd, source = select_decoding_weights(cfg.weights)
    task = resolve_family(cfg.weights, family, sd, asked=cfg.family)
    options = replace(cfg.decode, method=task.decoding_method(cfg.decode))  # the family's check and default
    model_cfg, build_options = model_config_for(cfg.weights, task, sd, cfg.model_flags)
    model = task.build(model_cfg.replace(vocab_size=tokenizer.vocab_size), **build_options)
    try:
        load_model_weights(model, sd, source)
    except CheckpointMismatchError as e:  # the tokens, not the shapes checked above: vocab size
        raise SystemExit(f"{e}; --lang-dir {cfg.lang_dir} must hold the tokens it was trained with") from None
    model.to(device).eval()
    log.info("Decoding %s model %s (%s), %s parameters", task.name, source, options.method,
             f"{sum(p.numel() for p in model.parameters()):,}")

    suffix = cfg.weights.label
    res_dir = cfg.weights.exp_dir / options.method
    res_dir.mkdir(parents=True, exist_ok=True)
    datamodule = PhoneDataModule(cfg.data, output_downsampling_factor=task.output_downsampling_factor)
    summary: dict[str, dict[str, float]] = {}
    for name, dl in datamodule.test_dataloaders(tokenizer).items():
        results = decode_dataset(dl, model, task, options, tokenizer, device)
        scoring.write_recogs(res_dir / f"recogs-{name}-{suffix}.txt", results)
        report = scoring.write_errs(res_dir / f"errs-{name}-{suffix}.txt", name, results, pfer=cfg.pfer)
        scoring.write_language_table(res_dir / f"per-language-{name}-{suffix}.txt", report)
        summary[name] = {"PER": report.overall.per, **({"PFER": report.overall.pfer} if cfg.pfer else {})}
        log.info("%s: PER %.2f%%%s over %d cuts", name, report.overall.per,
                 f", PFER {report.overall.pfer:.2f}%" if cfg.pfer else "", len(results))
    scoring.write_summary(res_dir / f"per-summary-{suffix}.txt", summary)
    print((res_dir / f"per-summary-{suffix}.txt").read_text())
    if cfg.save_decode_options:
        path = record_decode_options(cfg.weights.exp_dir, options.to_dict())
        log.info("Recorded the decode options in %s: %s", path, options.to_dict())
    return summary
