"""Fine-tune a published ZIPA model (or a local one) on your own Kaldi/Allosaurus-style data, in one command.

    anyphone finetune -i data/my_lang --init-from zipa-cr-small-500k --exp-dir exp/my_lang

Steps (each one is skipped when an earlier run already did it, so re-running the command continues):
  1. ``DATA_DIR`` (``wave`` or ``wav.scp`` + ``text``, optional ``utt2lang``) becomes Shar under
     ``EXP_DIR/data/train`` and ``EXP_DIR/data/dev``: ``--dev-dir`` if given, else a deterministic held-out
     ``--dev-fraction`` of the utterances. Bad files are named and skipped (see ``anyphone.data.shar``).
  2. ``--init-from`` is resolved (published name, Hub repo id, ``.pth``/``.pt`` file, or an anyphone exp dir:
     its ``best-valid.pt``, ``pretrained.pt`` or newest checkpoint); the family (CR-CTC / transducer) and the
     Zipformer shape come from the tensors, or from a ``config.json`` beside the checkpoint.
  3. The shared training loop runs with a fine-tuning schedule (lower learning rate, short warm-up, early
     decay), validates at every epoch end (dev PER) and keeps the best weights in ``EXP_DIR/best-valid.pt``.

Flags that ``finetune`` does not know are passed on to the recipe's training parser (``--max-minutes 30``,
``--use-fp16 1``, ``--speed-perturb 0`` ...; see ``zipformer_crctc/train.py --help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FINETUNE_SCHEDULE",
    "FinetuneError",
    "InitModel",
    "PreparedData",
    "best_result",
    "build_parser",
    "build_train_args",
    "finetune",
    "fit_batching",
    "main",
    "prepare_data",
    "resolve_init_model",
    "split_kaldi_dir",
]

log = logging.getLogger("anyphone.finetune")

# Training flags put before the user's extra flags (so the user's win). A pretrained model needs a lower peak
# learning rate than training from scratch (0.045), a short warm-up and a decay that starts early: small
# fine-tuning sets are seen many times, and the model is already near a good solution.
FINETUNE_SCHEDULE = ["--warmup-batches", "100", "--lr-batches", "1000", "--lr-epochs", "4"]

# Zipformer's training-time schedules (layer skipping, dropout, balancer limits) all reach their final values
# by 50k reference batches; a pretrained model starts there rather than at the warm-up values of a new model.
PRETRAINED_SCHEDULE_COUNT = 50000.0

class FinetuneError(Exception):
    """A one-line problem with the fine-tuning inputs (data, model or flags)."""


def _p(msg: str) -> None:
    print(f"[anyphone] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------------
# data


@dataclass
class PreparedData:
    """Shar directories for training and validation, and the utterance counts written to them."""

    train_dir: Path
    dev_dir: Path
    train_count: int
    dev_count: int
    train_seconds: float
    reused: bool  # True when an earlier run had already converted the data


def _kaldi_files(data_dir: Path) -> tuple[Path, Path, Path | None]:
    """(audio list, text, language list or None) of a Kaldi-style directory; FinetuneError when incomplete."""
    from anyphone.data.shar import kaldi_dir_files

    try:
        return kaldi_dir_files(data_dir)
    except FileNotFoundError as e:
        raise FinetuneError(str(e)) from None


def _dev_rank(utt_id: str) -> str:
    # a hash of the id, not of its position, so the split survives reordering and additions to the files
    return hashlib.sha1(utt_id.encode("utf-8")).hexdigest()


def split_kaldi_dir(data_dir: str | Path, out_dir: str | Path, dev_fraction: float = 0.1) -> tuple[Path, Path]:
    """Split a Kaldi-style directory into ``out_dir/train`` and ``out_dir/dev`` (same file layout).

    The dev part is the ``round(dev_fraction * n)`` (at least 1) utterances with the smallest SHA-1 of their id
    among the n that have a transcript and an existing, non-empty audio file, so the split is deterministic.
    Relative audio paths are made absolute. Every other line (bad or unmatched entries) goes to the train part,
    where the Shar conversion reports it. Returns (train_dir, dev_dir).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not 0.0 < dev_fraction < 1.0:
        raise FinetuneError(f"--dev-fraction {dev_fraction}: expected a number between 0 and 1")
    wave_file, text_file, lang_file = _kaldi_files(data_dir)
    from anyphone.data.shar import read_kaldi_table

    dup_lines: dict[str, dict[str, list[int]]] = {wave_file.name: {}, text_file.name: {}, "utt2lang": {}}
    waves = read_kaldi_table(wave_file, dup_lines[wave_file.name])
    texts = read_kaldi_table(text_file, dup_lines[text_file.name])
    langs = read_kaldi_table(lang_file, dup_lines["utt2lang"]) if lang_file else {}
    dups = {u for d in dup_lines.values() for u in d}
    if dups:
        # never last-one-wins: that would pair one utterance's audio with another's transcript
        shown = ", ".join(f"{u} ({name} lines {' '.join(map(str, d[u]))})"
                          for name, d in dup_lines.items() for u in sorted(d)[:5])
        log.warning(f"{data_dir}: {len(dups)} utterance id(s) appear more than once and are skipped: {shown}"
                    + (" ..." if len(dups) > 5 else ""))
        for table in (waves, texts, langs):
            for u in dups:
                table.pop(u, None)

    def abs_path(value: str) -> str:
        if not value or value.endswith("|"):  # pipes are reported as unsupported by the converter
            return value
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (data_dir / p).resolve())

    waves = {k: abs_path(v) for k, v in waves.items()}
    usable = [u for u, p in waves.items()
              if u in texts and p and not p.endswith("|") and Path(p).is_file() and Path(p).stat().st_size > 0]
    if len(usable) < 2:
        raise FinetuneError(f"data directory {data_dir}: {len(usable)} utterance(s) with a transcript and an "
                            "audio file; need at least 2 to hold some out for validation (or pass --dev-dir)")
    n_dev = min(len(usable) - 1, max(1, round(dev_fraction * len(usable))))
    dev_ids = set(sorted(usable, key=_dev_rank)[:n_dev])

    for part, keep in (("train", lambda u: u not in dev_ids), ("dev", lambda u: u in dev_ids)):
        d = out_dir / part
        d.mkdir(parents=True, exist_ok=True)
        tables = {"wav.scp": waves, "text": texts, "utt2lang": langs}
        for name, table in tables.items():
            tmp = d / f".{name}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                for utt, value in table.items():
                    if keep(utt):
                        f.write(f"{utt} {value}\n")
            os.replace(tmp, d / name)
    return out_dir / "train", out_dir / "dev"


def _problem_lines(reports: list[Any]) -> list[str]:
    from anyphone.data.shar import PROBLEMS

    lines = []
    for rep in reports:
        for kind, ids in rep.problems.items():
            for utt in ids:
                lines.append(f"{utt} ({PROBLEMS[kind]})")
    return lines


def prepare_data(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    dev_dir: str | Path | None = None,
    dev_fraction: float = 0.1,
    language: str = "",
    remove_diacritics: bool = False,
    shard_size: int = 1000,
) -> PreparedData:
    """Convert a Kaldi-style ``data_dir`` (and ``dev_dir``, or a held-out fraction) to Shar under ``out_dir``.

    Writes ``out_dir/train`` and ``out_dir/dev`` and, once both are complete, ``out_dir/prepared.json``. When
    that file exists with the same settings nothing is converted again; with other settings this raises
    FinetuneError rather than overwrite data that checkpoints in the exp dir were trained on.
    """
    from anyphone.data.shar import kaldi_dir_to_shar

    out_dir = Path(out_dir)
    marker = out_dir / "prepared.json"
    settings = {
        "input": str(Path(data_dir).expanduser().resolve()),
        "dev_dir": str(Path(dev_dir).expanduser().resolve()) if dev_dir else None,
        "dev_fraction": None if dev_dir else float(dev_fraction),
        "language": language,
        "remove_diacritics": bool(remove_diacritics),
    }
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("settings") != settings:
            old = done.get("settings", {})
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
            raise FinetuneError(f"{out_dir} holds data prepared with other settings ({diff}); use another "
                                f"--exp-dir, or delete {out_dir} to convert again")
        _p(f"data already prepared in {out_dir}: {done['train']} train / {done['dev']} dev utterances "
           f"(delete {marker} to convert again)")
        return PreparedData(out_dir / "train", out_dir / "dev", int(done["train"]), int(done["dev"]),
                            float(done.get("train_hours", 0.0)) * 3600, True)

    # no marker: anything here is from an interrupted conversion and is redone from the source files
    for part in ("train", "dev", "split"):
        shutil.rmtree(out_dir / part, ignore_errors=True)
    if dev_dir:
        train_src, dev_src = Path(data_dir), Path(dev_dir)
        _kaldi_files(train_src)
        _kaldi_files(dev_src)
    else:
        train_src, dev_src = split_kaldi_dir(data_dir, out_dir / "split", dev_fraction)
    common = {"shard_size": shard_size, "language": language, "remove_diacritics": remove_diacritics}
    try:
        train_rep = kaldi_dir_to_shar(train_src, out_dir / "train", **common)
        dev_rep = kaldi_dir_to_shar(dev_src, out_dir / "dev", **common)
    except FileNotFoundError as e:
        raise FinetuneError(str(e)) from None
    bad = _problem_lines([train_rep, dev_rep])
    if bad:
        shown = "; ".join(bad[:20]) + (f"; ... {len(bad) - 20} more (see the warnings above)" if len(bad) > 20 else "")
        _p(f"skipped {len(bad)} utterance(s): {shown}")
    for rep, name, src in ((train_rep, "training", train_src), (dev_rep, "dev", dev_src)):
        if rep.written == 0:
            raise FinetuneError(f"{src}: no usable {name} utterance (every one was skipped, see above)")
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "train": train_rep.written, "dev": dev_rep.written,
                               "train_hours": train_rep.seconds / 3600, "dev_hours": dev_rep.seconds / 3600,
                               "skipped": bad}, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, marker)
    _p(f"prepared {train_rep.written} train ({train_rep.seconds / 60:.1f} min) and {dev_rep.written} dev "
       f"({dev_rep.seconds / 60:.1f} min) utterances in {out_dir}")
    return PreparedData(out_dir / "train", out_dir / "dev", train_rep.written, dev_rep.written, train_rep.seconds,
                        False)


# --------------------------------------------------------------------------------------------------------
# the model to start from


@dataclass
class InitModel:
    """A resolved starting checkpoint: its file, tokens, model family (a registry name), config and the build
    options the family reads off its tensors (a transducer's joint CTC head)."""

    checkpoint: Path
    tokens: Path | None
    family: str
    config: Any  # anyphone.models.presets.ZipformerConfig
    options: dict[str, Any]
    vocab_size: int
    label: str


def _exp_dir_checkpoint(path: Path) -> Path | None:
    """The checkpoint to start from in an anyphone exp dir: best-valid.pt, pretrained.pt, else the newest one."""
    for name in ("best-valid.pt", "pretrained.pt"):
        if (path / name).is_file():
            return path / name
    if any(path.glob("checkpoint-*.pt")) or any(path.glob("epoch-*.pt")):
        from anyphone.weights.checkpoint import latest_checkpoint

        return latest_checkpoint(path)
    return None


def _json_config(checkpoint: Path) -> dict | None:
    """The model section of the config.json describing ``checkpoint`` (``x.json`` beside ``x.pt``, else the
    folder's ``config.json``), or None; FinetuneError (one line) for a file that is not JSON."""
    from anyphone.weights.expdir import CONFIG_FILE, read_model_config

    try:
        return read_model_config(checkpoint.with_suffix(".json"), checkpoint.parent / CONFIG_FILE)
    except ValueError as e:
        raise FinetuneError(str(e)) from None


def resolve_init_model(name_or_path: str | os.PathLike) -> InitModel:
    """Find the model to fine-tune from and tell its family and shape.

    Accepts a published name (``anyphone list-models``), a Hub repo id, a ``.pth``/``.pt`` state_dict (or
    ``{'model': state_dict}`` checkpoint), a folder with one checkpoint, or an anyphone exp dir. The shape is
    a preset when one fits every tensor, else the ``config.json`` beside the checkpoint, else derived from the
    tensor shapes. Raises FinetuneError (one line) when the model cannot be found, read or understood.
    """
    from anyphone.families import detect_family
    from anyphone.inference import hub

    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    target: str | Path = text
    if path.is_dir():
        found = _exp_dir_checkpoint(path)
        target = found if found is not None else path
    try:
        files = hub.resolve_model(target)
    except hub.ModelNotAvailableError as e:
        raise FinetuneError(f"--init-from: {e}") from None
    try:
        sd = hub.load_state_dict(files.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise FinetuneError(f"--init-from {text}: {e}") from None
    try:
        family = detect_family(sd)
    except ValueError:
        raise FinetuneError(f"--init-from {text}: {files.checkpoint} holds weights of no known model family; "
                            "not a ZIPA/anyphone model") from None
    json_cfg = _json_config(files.checkpoint)
    try:
        cfg, options = family.config_from_state_dict(sd, json_cfg)
    except ValueError as e:
        if json_cfg is None:
            raise FinetuneError(f"--init-from {text}: {e}; put its config.json beside the checkpoint") from None
        try:  # a config.json that belongs to another model: the tensors alone may still say enough
            cfg, options = family.config_from_state_dict(sd, None)
        except ValueError:
            raise FinetuneError(f"--init-from {text}: the config.json beside {files.checkpoint} does not fit "
                                f"its tensors ({e})") from None
    label = files.name or text
    log.info("init model %s: %s, %s config", label, family.name, cfg.name)
    return InitModel(Path(files.checkpoint), Path(files.tokens) if files.tokens else None, family.name, cfg,
                     options, family.vocab_size_of(sd), label)


def _apply_model_config(args: argparse.Namespace, init: InitModel, extra: list[str]) -> None:
    """Set the training arguments that rebuild exactly the init model's shape (each shape field the user did
    not pass in ``extra``), straight from its ZipformerConfig: no round trip through flag strings."""
    from anyphone.models.presets import PRESETS, model_flag_dests

    fields = init.config.to_dict()
    for dest in model_flag_dests():
        if dest in fields and not _given("--" + dest.replace("_", "-"), extra):
            setattr(args, dest, fields[dest])
    for dest, value in init.options.items():  # the family's build options, e.g. a transducer's --use-ctc
        if not _given("--" + dest.replace("_", "-"), extra):
            setattr(args, dest, value)
    if not _given("--model-size", extra):
        # every shape field is set above; the name only labels config.json (fixture_tiny is no --model-size
        # choice, and a derived shape is "custom")
        args.model_size = init.config.name if init.config.name in PRESETS else None


def _write_lang_dir(init: InitModel, lang_dir: Path) -> Path:
    """EXP_DIR/lang/tokens.txt: the init model's tokens, or the built-in ZIPA tokens when it has none."""
    from anyphone.fileio import atomic_write_bytes
    from anyphone.text.tokenizer import IpaTokenizer, default_lang_dir

    src = init.tokens or (default_lang_dir() / "tokens.txt")
    tok = IpaTokenizer.from_tokens_file(src)
    if tok.vocab_size != init.vocab_size:
        where = f"{src}" if init.tokens else "the built-in ZIPA tokens.txt (none beside the checkpoint)"
        raise FinetuneError(f"--init-from {init.label}: the model has {init.vocab_size} outputs but {where} has "
                            f"{tok.vocab_size} tokens; put the model's tokens.txt beside the checkpoint")
    lang_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(lang_dir / "tokens.txt", Path(src).read_bytes())
    return lang_dir


# --------------------------------------------------------------------------------------------------------
# training


class _PretrainedScheduleTask:
    """Wraps a task so that Zipformer's training-time schedules start past their warm-up (see
    PRETRAINED_SCHEDULE_COUNT); everything else is the wrapped task's. Picklable for mp.spawn."""

    def __init__(self, task: Any, offset: float) -> None:
        self.task = task
        self.offset = offset

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("task", "offset"):  # keeps pickling and copying from recursing
            raise AttributeError(name)
        return getattr(self.task, name)

    def compute_loss(self, model, batch: dict, args, batch_idx_train: int, is_training: bool):
        if is_training and self.offset > 0:
            from anyphone.training.loop import adjusted_batch_count, set_batch_count

            set_batch_count(model, self.offset + adjusted_batch_count(batch_idx_train, args))
        return self.task.compute_loss(model, batch, args, batch_idx_train, is_training)


def _given(flag: str, argv: list[str]) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def build_train_args(opts: argparse.Namespace, init: InitModel, extra: list[str]) -> argparse.Namespace:
    """The recipe's training arguments for this fine-tuning run; ``extra`` flags override the defaults.

    Raises FinetuneError for flags the training parser does not know either.
    """
    from anyphone.training.recipe import get_train_parser

    exp = Path(opts.exp_dir)
    argv = [
        "--exp-dir", str(exp), "--lang-dir", str(exp / "lang"),
        "--train-shar", str(exp / "data" / "train"), "--dev-shar", str(exp / "data" / "dev"),
        "--init-from", str(init.checkpoint),
        "--num-epochs", str(opts.num_epochs), "--max-duration", str(opts.max_duration),
        "--base-lr", str(opts.base_lr), *FINETUNE_SCHEDULE,
        "--valid-every-epoch", "1", "--keep-best", "1",
        "--device", opts.device, "--world-size", str(opts.world_size),
        "--remove-diacritics", "1" if opts.remove_diacritics else "0",
        *extra,
    ]
    parser = get_train_parser(init.family)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise FinetuneError(f"unknown option(s) {' '.join(unknown)}: not a finetune flag (anyphone finetune "
                            f"--help) nor a training flag (zipformer_{init.family}/train.py --help)")
    _apply_model_config(args, init, extra)
    return args


def fit_batching(args: argparse.Namespace, train_seconds: float, extra: list[str]) -> None:
    """Batching for a small set, unless the user chose it: buckets that each hold about 4 batches (30 buckets of
    a few seconds each would leave nothing once partial batches are dropped), and, on one process, every
    utterance used (no dropped last batches; with DDP they keep the ranks in step)."""
    if not _given("--num-buckets", extra):
        per_batch = args.max_duration * max(1, args.world_size)
        args.num_buckets = int(min(args.num_buckets, max(1, train_seconds // (4 * per_batch))))
    if not _given("--drop-last", extra) and args.world_size <= 1:
        args.drop_last = False


def best_result(exp_dir: str | Path) -> dict | None:
    """{'per': best dev PER in %, 'epoch', 'batch', 'path'} read from EXP_DIR/best-valid.pt, or None."""
    import torch

    path = Path(exp_dir) / "best-valid.pt"
    if not path.is_file():
        return None
    ck = torch.load(path, map_location="cpu", weights_only=True)
    state = ck.get("train_state", {}) or {}
    valid = ck.get("valid", {}) or {}
    return {"per": float(valid.get("err_rate", state.get("best_valid_err", float("nan")))),
            "epoch": int(state.get("epoch", 0)), "batch": int(state.get("batch_idx_train", 0)), "path": path}


def finetune(opts: argparse.Namespace, extra: list[str] | None = None) -> dict | None:
    """Run the whole fine-tuning: resolve the model, prepare the data, train; returns :func:`best_result`.

    Holds the exp dir's lock from the data preparation to the end of training, so a second ``finetune`` (or
    training) on the same exp dir is refused in one line instead of converting and training over this one.
    """
    import contextlib

    from anyphone.families import get_family
    from anyphone.fileio import LockedError
    from anyphone.training.loop import hold_exp_dir, run

    extra = list(extra or [])
    exp = Path(opts.exp_dir)
    # everything that can fail on bad input fails before any long work starts
    if not (exp / "data" / "prepared.json").is_file():
        _kaldi_files(Path(opts.input).expanduser())
        if opts.dev_dir:
            _kaldi_files(Path(opts.dev_dir).expanduser())
    init = resolve_init_model(opts.init_from)
    args = build_train_args(opts, init, extra)
    if opts.dev_dir and Path(opts.dev_dir).expanduser().resolve() == Path(opts.input).expanduser().resolve():
        raise FinetuneError(f"--dev-dir {opts.dev_dir} is the training data; give a separate dev set")
    _p(f"starting from {init.label} ({init.checkpoint}): {init.family}, {init.config.name} shape")
    exp.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold_exp_dir(exp))
        except LockedError as e:
            raise FinetuneError(str(e)) from None
        _write_lang_dir(init, exp / "lang")
        data = prepare_data(opts.input, exp / "data", dev_dir=opts.dev_dir, dev_fraction=opts.dev_fraction,
                            language=opts.language, remove_diacritics=opts.remove_diacritics)
        fit_batching(args, data.train_seconds, extra)

        offset = PRETRAINED_SCHEDULE_COUNT if opts.pretrained_schedules else 0.0
        # exits with status 3 (loop.EXIT_CHECKPOINTED_ON_SIGNAL) when SIGTERM / SIGUSR1 stopped it
        run(args, _PretrainedScheduleTask(get_family(init.family), offset))

    best = best_result(exp)
    if best is None:
        _p(f"no validation result in {exp} (training stopped before the first epoch ended?); the newest "
           f"checkpoint is in {exp}")
        return None
    _p(f"best dev PER {best['per']:.2f}% (epoch {best['epoch']}, batch {best['batch']}): {best['path']}")
    _p(f"use it: anyphone recognize -i x.wav -m {best['path']}")
    return best


def build_parser(prog: str = "anyphone finetune") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
        description="Fine-tune a ZIPA model on a Kaldi/Allosaurus-style data dir ('wave' or 'wav.scp' + 'text' "
        "with IPA transcripts). Re-running the same command continues where it stopped. Unknown flags go to "
        "the training parser (e.g. --max-minutes 30, --use-fp16 1; see zipformer_crctc/train.py --help).")
    p.add_argument("-i", "--input", required=True, metavar="DATA_DIR",
                   help="Training data: 'wave' (or 'wav.scp') and 'text' files, optional 'utt2lang'.")
    p.add_argument("--init-from", required=True, metavar="MODEL",
                   help="Model to start from: published name (anyphone list-models), Hub repo id, .pth/.pt file, "
                   "or an anyphone exp dir (its best-valid.pt, pretrained.pt or newest checkpoint).")
    p.add_argument("--exp-dir", required=True, type=Path, help="Data, checkpoints, logs and best-valid.pt go here.")
    p.add_argument("--dev-dir", default=None, help="Validation data dir (same layout); default: hold out "
                   "--dev-fraction of DATA_DIR.")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="Share of utterances held out for validation.")
    p.add_argument("--num-epochs", type=int, default=10)
    p.add_argument("--max-duration", type=float, default=200.0, help="Seconds of audio per batch.")
    p.add_argument("--base-lr", type=float, default=0.01, help="Peak learning rate (from-scratch training: 0.045).")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    p.add_argument("--world-size", type=int, default=1, help="Processes (GPUs) for distributed training.")
    p.add_argument("--language", default="", help="Language code of utterances without an utt2lang entry.")
    p.add_argument("--remove-diacritics", action="store_true",
                   help="Strip IPA diacritics from transcripts (for the no-diacritics ZIPA models).")
    p.add_argument("--pretrained-schedules", type=int, choices=[0, 1], default=1,
                   help="1: Zipformer's layer skipping, dropout and balancer schedules start at their "
                   "end-of-training values (a pretrained model); 0: start them as for a new model.")
    return p


def main(argv: list[str] | None = None) -> int:
    """``anyphone finetune ...`` / ``python -m anyphone.training.finetune ...``; returns the exit status."""
    import sys

    opts, extra = build_parser().parse_known_args(argv)
    try:
        finetune(opts, extra)
    except FinetuneError as e:
        print(f"anyphone finetune: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
