"""Pseudo-labelling for noisy-student training: a CTC teacher transcribes unlabelled Shar, the labels are
filtered, and the result is Shar the student trains on (``--train-shar DIR:WEIGHT``).

What each output cut carries (``cut.custom``; see also ``anyphone.data.shar.label_kind``):

* ``label_kind``: ``"pseudo"`` for a kept label (its supervision text is the teacher's IPA), ``"unlabelled"`` for
  a rejected one when ``keep_rejected`` (empty text: with ``--use-unsup-cr-ctc 1`` the student still trains on
  it with the consistency term alone; without the flag it is dropped and counted);
* ``pseudo_confidence``: the teacher's confidence in the label, in [0, 1] (below);
* ``teacher``: who labelled it: the model (its name, or exp dir with iter/avg), the decoding method and blank
  penalty, and the first 12 hex digits of a sha256 over its weights;
* ``pseudo_rejected`` (rejected cuts only): the first filter that failed (``empty``, ``length``, ``confidence``).

Confidence. ``exp(log P_CTC(label | audio) / max(1, U))`` for a label of ``U`` tokens: the per-token geometric
mean of the probability the teacher gives the whole label, summed over every alignment (the CTC forward
algorithm on the teacher's own, un-penalised posteriors). Why this and not the mean posterior of the emitting
frames: it is defined for any decoding method (greedy or prefix beam search, with a blank penalty); it also
falls when the teacher nearly emitted a phone it did not write, or nearly merged two, because that probability
mass goes to other labels, while the emitting frames alone never see a deletion; and dividing by the tokens, not
the frames, keeps long pauses (confident blanks) from inflating it.

Filters, in this order, each counting the cuts it rejects (a cut is counted by the first one that fails):

* ``empty``: the teacher wrote nothing (silence, or speech it cannot transcribe);
* ``length``: ZIPA's rule that a pseudo-label must fit well inside the output frames: the frames CTC needs for
  it (one per token plus one blank between repeated tokens) must not exceed ``length_ratio`` (0.85) of the
  teacher's output frames; a denser label is most often a teacher looping on noise, and the student, which
  sees speed-perturbed (faster) audio, might not be able to align it at all;
* ``confidence``: confidence below ``min_confidence``.

The teacher decodes clean audio (no augmentation); the student trains on the same audio augmented (speed, noise,
SpecAugment and CR-CTC's masks): that gap is the "noisy" of noisy student.

Resumable and parallel: input shard ``i`` becomes output shard ``i`` (``cuts.00000i.jsonl.gz`` and
``recording.00000i.tar``), written into a temporary folder and renamed into place, then marked done by
``pseudo_label_progress/00000i.json`` (its counts). A rerun skips the shards marked done; under torchrun rank
``r`` of ``W`` takes shards ``r, r + W, ...``. The ranks share nothing but the folder; whichever finds every
shard done writes ``pseudo_label_report.json`` (the totals). ``pseudo_label_config.json`` records the teacher and
the filters, and a rerun with different ones is refused rather than mixing two teachers in one folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anyphone.data.fbank import SAMPLE_RATE, FbankModule, pad_waves
from anyphone.data.module import ctc_min_frames
from anyphone.data.shar import DataError, _count_cuts, _is_remote, cut_refusal, shar_fields
from anyphone.fileio import TMP_PREFIX, atomic_write_text
from anyphone.utils import resolve_device

log = logging.getLogger("anyphone.pseudo_label")

CONFIG_NAME = "pseudo_label_config.json"
REPORT_NAME = "pseudo_label_report.json"
PROGRESS_DIR = "pseudo_label_progress"
FILTERS = ("empty", "length", "confidence")
METHODS = ("ctc-greedy-search", "ctc-prefix-beam-search")
_READER_FIELDS = ("shard_origin", "shar_epoch")  # set on cuts by the Shar reader, not data to write back
_MIN_SAMPLES = 3200  # 0.2 s: shorter audio is zero-padded so the convolutional front end has frames to work on


@dataclass
class PseudoLabelConfig:
    """How to pseudo-label. The teacher is a CR-CTC/CTC model in any form ``anyphone.inference.load_model``
    takes: a recipe exp dir (with ``iter``/``epoch`` and ``avg``), a ``.pt``/``.pth`` file or a published name.

    Args:
      teacher: the model (see above).
      iter, epoch, avg, use_averaged_model: checkpoint choice in an exp dir (icefall's decode.py rules).
      tokens: tokens.txt of the teacher (default: found beside it, else the built-in ZIPA tokens).
      device: "auto" (this rank's GPU if there is one, else CPU), "cpu", "cuda:N".
      decoding_method: "ctc-greedy-search" or "ctc-prefix-beam-search" (``beam_size``).
      blank_penalty: subtracted from the blank's log-probability before the search (not for the confidence).
      max_duration: seconds of (padded) audio per teacher batch.
      min_confidence, length_ratio: the filters (module docstring); ``min_confidence`` 0 keeps every confidence.
      keep_rejected: write rejected cuts as ``label_kind="unlabelled"`` (consistency-only) instead of dropping them.
      trust_commands: allow cuts whose audio is loaded by running a command (refused otherwise).
      rank, world_size: this process's share of the shards (torchrun's RANK and WORLD_SIZE).
      progress: show a progress bar (rank 0 only).
    """

    teacher: str
    iter: int = 0
    epoch: int = 0
    avg: int = 1
    use_averaged_model: bool = True
    tokens: str | None = None
    device: str = "auto"
    decoding_method: str = "ctc-greedy-search"
    beam_size: int = 4
    blank_penalty: float = 0.0
    max_duration: float = 200.0
    min_confidence: float = 0.0
    length_ratio: float = 0.85
    keep_rejected: bool = True
    trust_commands: bool = False
    rank: int = 0
    world_size: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.decoding_method not in METHODS:
            raise ValueError(f"decoding_method {self.decoding_method!r}: expected one of {', '.join(METHODS)}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence {self.min_confidence}: expected a value in [0, 1]")
        if not 0.0 < self.length_ratio <= 1.0:
            raise ValueError(f"length_ratio {self.length_ratio}: expected a value in (0, 1]")
        if not self.max_duration > 0:
            raise ValueError(f"max_duration {self.max_duration}: expected seconds > 0")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank}: expected 0 <= rank < world_size {self.world_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PseudoLabelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def filter_settings(self) -> dict[str, Any]:
        """What decides the labels (a resumed run must match these): the filters and the decoding."""
        return {"decoding_method": self.decoding_method, "beam_size": self.beam_size,
                "blank_penalty": self.blank_penalty, "min_confidence": self.min_confidence,
                "length_ratio": self.length_ratio, "keep_rejected": self.keep_rejected}


def dist_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside it."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


# ----------------------------------------------------------------------------------------------------------
# The labels


def label_confidences(log_probs: torch.Tensor, lens: torch.Tensor, labels: Sequence[Sequence[int]],
                      blank_id: int = 0) -> list[float]:
    """``exp(log P_CTC(label | x) / max(1, U))`` per utterance (module docstring), from (N, T, V) log-posteriors
    and (N,) valid frames. A label that cannot be aligned to its frames gets 0."""
    from anyphone.losses.crctc import ctc_loss

    if len(labels) == 0:
        return []
    nll = ctc_loss(log_probs.float(), lens, [list(x) for x in labels], blank_id=blank_id, reduction="none")
    out = []
    for value, label in zip(nll.detach().cpu().double().tolist(), labels):
        out.append(0.0 if not math.isfinite(value) else math.exp(-value / max(1, len(label))))
    return out


def judge(tokens: Sequence[int], frames: int, confidence: float, cfg: PseudoLabelConfig) -> str | None:
    """The first filter a label fails (``"empty"``, ``"length"``, ``"confidence"``), or None to keep it.

    ``frames``: the teacher's output frames for the utterance; ``length`` keeps a label when
    ``ctc_min_frames(tokens) <= length_ratio * frames``.
    """
    if not tokens:
        return "empty"
    if ctc_min_frames(tokens) > cfg.length_ratio * frames:
        return "length"
    if confidence < cfg.min_confidence:
        return "confidence"
    return None


@dataclass
class ShardStats:
    """Counts of one input shard (and, summed, of a run). ``rejected[f]``: cuts the filter ``f`` rejected;
    ``written``: cuts in the output (kept, plus rejected ones when they are kept as unlabelled);
    ``ref_*``: phone errors against reference transcripts, when given (kept and rejected labels apart)."""

    cuts: int = 0
    seconds: float = 0.0
    kept: int = 0
    kept_seconds: float = 0.0
    written: int = 0
    unreadable: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: {f: 0 for f in FILTERS})
    confidence_sum: float = 0.0
    teacher_seconds: float = 0.0
    wall_seconds: float = 0.0
    ref_kept_errors: int = 0
    ref_kept_phones: int = 0
    ref_rejected_errors: int = 0
    ref_rejected_phones: int = 0

    def add(self, other: ShardStats) -> None:
        for f in fields(self):
            if f.name == "rejected":
                for k, v in other.rejected.items():
                    self.rejected[k] = self.rejected.get(k, 0) + v
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardStats:
        names = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in names and k != "rejected"})
        out.rejected.update({k: int(v) for k, v in (d.get("rejected") or {}).items()})
        return out


@dataclass
class PseudoLabelReport:
    """What a run did: ``totals`` over the shards done so far (this run's and earlier runs'), the shards done by
    this process in this run, the ones it found already done, those it could not read, and whether every shard
    of the input is now done."""

    totals: ShardStats
    teacher: str
    shards: int
    done_now: list[int]
    done_before: list[int]
    failed: dict[int, str]
    complete: bool

    def summary(self) -> str:
        t = self.totals
        rej = ", ".join(f"{k} {v}" for k, v in t.rejected.items())
        mean_conf = t.confidence_sum / t.kept if t.kept else 0.0
        lines = [
            f"teacher: {self.teacher}",
            f"input: {t.cuts} cuts, {t.seconds / 3600:.2f} h in {self.shards} shard(s)"
            + (f", {t.unreadable} unreadable" if t.unreadable else ""),
            (f"kept: {t.kept} cuts ({100.0 * t.kept / max(t.cuts, 1):.1f}%), {t.kept_seconds / 3600:.2f} h, "
             f"mean confidence {mean_conf:.3f}"),
            f"rejected: {rej}; written: {t.written} cuts",
            f"compute: teacher {t.teacher_seconds:.0f} s, wall {t.wall_seconds:.0f} s (summed over shards)",
        ]
        if t.ref_kept_phones or t.ref_rejected_phones:
            kept_per = 100.0 * t.ref_kept_errors / max(t.ref_kept_phones, 1)
            rej_per = 100.0 * t.ref_rejected_errors / max(t.ref_rejected_phones, 1)
            lines.append(f"against the references: PER {kept_per:.2f}% of the kept labels, {rej_per:.2f}% of the "
                         "rejected ones")
        if self.failed:
            lines.append(f"unreadable shards (not done; a rerun retries them): {len(self.failed)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# The teacher


class Teacher:
    """A model of a CTC family, its tokenizer and a name: ``(N, T, 80) features -> (N, T', V) log-posteriors``."""

    def __init__(self, model: torch.nn.Module, family: Any, tokenizer: Any, name: str, device: torch.device
                 ) -> None:
        self.model = model.to(device).eval()
        self.family = family  # anyphone.families: its ctc_log_probs runs the model
        self.tokenizer = tokenizer
        self.device = device
        self.fbank = FbankModule().to(device)
        digest = hashlib.sha256()
        for key, value in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        self.name = name
        self.sha = digest.hexdigest()[:12]

    @torch.inference_mode()
    def log_probs(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono 16 kHz waves -> (N, T', V) log-posteriors on CPU (float32) and (N,) output frames."""
        audio, lens = pad_waves([w if len(w) >= _MIN_SAMPLES else np.pad(w, (0, _MIN_SAMPLES - len(w)))
                                 for w in waves])
        feats, feat_lens = self.fbank(audio.to(self.device), lens.to(self.device))
        return self.family.ctc_log_probs(self.model, feats, feat_lens)


def load_teacher(cfg: PseudoLabelConfig, local_rank: int = 0) -> Teacher:
    """The teacher ``cfg`` names (ValueError / FileNotFoundError with one line when it cannot be used)."""
    from anyphone.inference import load_model

    device = resolve_device(cfg.device, local_rank)
    rec = load_model(cfg.teacher, device=str(device), iter=cfg.iter or None, avg=cfg.avg or None,
                     epoch=cfg.epoch or None, use_averaged_model=cfg.use_averaged_model, tokens=cfg.tokens)
    if rec.model is None or not rec.model_family.has_ctc:
        raise ValueError(f"{cfg.teacher}: the teacher must be a PyTorch model of a CTC family; this one is "
                         f"{rec.family}" + (" (ONNX)" if rec.model is None else ""))
    # load_model selects the weights as decode.py does (iter/avg/use_averaged_model): the model stage 2 decoded
    return Teacher(rec.model, rec.model_family, rec.tokenizer, rec.name, device)


def teacher_identity(teacher: Teacher, cfg: PseudoLabelConfig) -> str:
    """The ``teacher`` string written into every cut (module docstring)."""
    how = cfg.decoding_method + (f" beam {cfg.beam_size}" if cfg.decoding_method == "ctc-prefix-beam-search" else "")
    if cfg.blank_penalty:
        how += f" blank-penalty {cfg.blank_penalty:g}"
    return f"{teacher.name} ({how}) sha256:{teacher.sha}"


def decode_batch(teacher: Teacher, waves: Sequence[np.ndarray], cfg: PseudoLabelConfig
                 ) -> list[tuple[list[int], int, float]]:
    """(token ids, output frames, confidence) for each wave."""
    from anyphone.decoding.ctc import apply_blank_penalty, ctc_greedy_search, ctc_prefix_beam_search

    lp, lens = teacher.log_probs(waves)
    search = apply_blank_penalty(lp, cfg.blank_penalty, teacher.tokenizer.blank_id) if cfg.blank_penalty else lp
    if cfg.decoding_method == "ctc-greedy-search":
        hyps = ctc_greedy_search(search, lens, teacher.tokenizer.blank_id)
    else:
        hyps = ctc_prefix_beam_search(search, lens, beam=cfg.beam_size, blank_id=teacher.tokenizer.blank_id)
    # labels the tokenizer cannot write back (<unk>, the word separator) are not labels: drop them
    silent = {i for i in (teacher.tokenizer.unk_id, teacher.tokenizer.word_sep_id, teacher.tokenizer.sos_eos_id)
              if i is not None}
    hyps = [[t for t in h if t not in silent] for h in hyps]
    conf = label_confidences(lp, lens, hyps, teacher.tokenizer.blank_id)
    return [(h, int(n), c) for h, n, c in zip(hyps, lens.tolist(), conf)]


# ----------------------------------------------------------------------------------------------------------
# Reading and writing shards


def _open_shard(src: str, one: dict[str, list[str]]) -> Iterable[Any]:
    if _is_remote(src):
        from anyphone.data.remote import open_remote_shar

        return open_remote_shar(src, fields=one)
    from lhotse import CutSet
    from lhotse.shar.readers.lazy import LazySharIterator

    return CutSet(LazySharIterator(fields=one))


def _load_wave(cut: Any) -> np.ndarray:
    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    audio = np.asarray(cut.load_audio(), dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    if audio.size == 0 or not np.all(np.isfinite(audio)):
        raise ValueError("empty or non-finite audio")
    return audio


def _relabel(cut: Any, text: str, custom: dict[str, Any]) -> Any:
    """The cut with one supervision spanning it whose text is ``text``, and ``custom`` merged in."""
    from lhotse import SupervisionSegment
    from lhotse.utils import fastcopy

    sups = list(cut.supervisions)
    language = next((s.language for s in sups if s.language), None)
    if sups:
        sup = fastcopy(sups[0], start=0.0, duration=cut.duration, text=text, language=language)
    else:
        sup = SupervisionSegment(id=cut.id, recording_id=cut.recording_id, start=0.0, duration=cut.duration,
                                 channel=cut.channel, text=text, language=language)
    kept = {k: v for k, v in (cut.custom or {}).items() if k not in _READER_FIELDS}
    return fastcopy(cut, supervisions=[sup], custom={**kept, **custom})


def read_shar_texts(src: str | os.PathLike) -> dict[str, str]:
    """cut id -> transcript of a Shar folder, read from its cuts manifests alone (no audio)."""
    import gzip

    out: dict[str, str] = {}
    for path in shar_fields(src)["cuts"]:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    item = json.loads(line)
                    out[item["id"]] = "".join(s.get("text") or "" for s in item.get("supervisions") or ())
    return out


class _Batcher:
    """Decodes cuts in batches of at most ``max_duration`` s of padded audio, sorted by length inside a buffer,
    and hands back (cut, wave or None, label) in the input order."""

    def __init__(self, teacher: Teacher, cfg: PseudoLabelConfig, stats: ShardStats, buffer_cuts: int = 256) -> None:
        self.teacher, self.cfg, self.stats = teacher, cfg, stats
        self.buffer_cuts = buffer_cuts

    def run(self, cuts: Iterable[Any]) -> Iterator[tuple[Any, tuple[list[int], int, float] | None]]:
        buf: list[Any] = []
        for cut in cuts:
            buf.append(cut)
            if len(buf) >= self.buffer_cuts:
                yield from self._flush(buf)
                buf = []
        if buf:
            yield from self._flush(buf)

    def _flush(self, buf: list[Any]) -> Iterator[tuple[Any, tuple[list[int], int, float] | None]]:
        waves: list[np.ndarray | None] = []
        for cut in buf:
            try:
                waves.append(_load_wave(cut))
            except Exception as e:  # noqa: BLE001 - one bad recording must not stop a long run
                log.warning(f"cut {cut.id}: cannot load its audio ({type(e).__name__}: {e}); skipped")
                waves.append(None)
        order = sorted((i for i, w in enumerate(waves) if w is not None), key=lambda i: len(waves[i]))
        labels: dict[int, tuple[list[int], int, float]] = {}
        batch: list[int] = []
        for i in order:
            longest = max(len(waves[i]), _MIN_SAMPLES)  # sorted: this one is the longest so far
            if batch and longest * (len(batch) + 1) > self.cfg.max_duration * SAMPLE_RATE:
                self._decode(batch, waves, labels)
                batch = []
            batch.append(i)
        if batch:
            self._decode(batch, waves, labels)
        for i, cut in enumerate(buf):
            yield cut, labels.get(i)

    def _decode(self, batch: list[int], waves: list, labels: dict) -> None:
        start = time.time()
        for i, out in zip(batch, decode_batch(self.teacher, [waves[i] for i in batch], self.cfg)):
            labels[i] = out
        self.stats.teacher_seconds += time.time() - start


def _write_shard(index: int, items: Iterable[Any], out_dir: Path) -> int:
    """Write ``items`` (cuts) as output shard ``index``: into a temporary folder, then renamed into place
    (recording tar first, cuts manifest last). Returns the count; nothing is written for none."""
    from lhotse.shar import SharWriter

    tmp = out_dir / f"{TMP_PREFIX}shard-{index:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = 0
    try:
        with SharWriter(str(tmp), fields={"recording": "flac"}, shard_size=10**9, shard_offset=index) as writer:
            for cut in items:
                writer.write(cut)
                n += 1
        if n:
            names = {f: f"{f}.{index:06d}.{ext}" for f, ext in (("recording", "tar"), ("cuts", "jsonl.gz"))}
            for f in ("recording", "cuts"):
                with open(tmp / names[f], "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp / names[f], out_dir / names[f])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return n


def _label_shard(index: int, shard: dict[str, str], src: str, out_dir: Path, teacher: Teacher, identity: str,
                 cfg: PseudoLabelConfig, references: Mapping[str, str] | None, bar: Any) -> ShardStats:
    from anyphone.decoding.scoring import utterance_stats

    stats = ShardStats()
    start = time.time()
    one = {f: [shard[f]] for f in ("cuts", "recording")}

    def cuts() -> Iterator[Any]:
        for cut in _open_shard(src, one):
            why = cut_refusal(cut, cfg.trust_commands)
            if why:
                hint = "" if cfg.trust_commands else " (pass --trust-data-commands 1 if you trust this data)"
                raise DataError(f"{shard['cuts']}: cut {cut.id!r}: {why}; refused{hint}")
            yield cut

    def outputs() -> Iterator[Any]:
        for cut, label in _Batcher(teacher, cfg, stats).run(cuts()):
            stats.cuts += 1
            stats.seconds += cut.duration
            if bar is not None:
                bar.update(1)
            if label is None:
                stats.unreadable += 1
                continue
            tokens, frames, conf = label
            reason = judge(tokens, frames, conf, cfg)
            text = teacher.tokenizer.decode(tokens)
            if references is not None and cut.id in references:
                errs = utterance_stats(references[cut.id], text, pfer=False)
                if reason is None:
                    stats.ref_kept_errors += errs.errors
                    stats.ref_kept_phones += errs.ref_phones
                else:
                    stats.ref_rejected_errors += errs.errors
                    stats.ref_rejected_phones += errs.ref_phones
            custom = {"pseudo_confidence": round(conf, 6), "teacher": identity}
            if reason is None:
                stats.kept += 1
                stats.kept_seconds += cut.duration
                stats.confidence_sum += conf
                stats.written += 1
                yield _relabel(cut, text, {"label_kind": "pseudo", **custom})
            else:
                stats.rejected[reason] += 1
                if cfg.keep_rejected:
                    stats.written += 1
                    yield _relabel(cut, "", {"label_kind": "unlabelled", "pseudo_rejected": reason, **custom})
            if bar is not None:
                bar.set_postfix(kept=f"{stats.kept}/{stats.cuts}", refresh=False)

    _write_shard(index, outputs(), out_dir)
    stats.wall_seconds = time.time() - start
    return stats


# ----------------------------------------------------------------------------------------------------------
# The run


def _shard_incomplete(src: str, shard: Mapping[str, str], stats: ShardStats) -> str | None:
    """Why a shard that was read to its end is not complete (a stream that failed, a truncated tar), or None."""
    if _is_remote(src):
        from anyphone.data.remote import shard_failures

        why = shard_failures().get(src, {}).get(shard["cuts"])
        return f"reading failed ({why})" if why else None
    expected = _count_cuts(shard["cuts"])
    if expected is not None and stats.cuts < expected:
        return f"{shard['recording']} holds {stats.cuts} of the {expected} cuts of its manifest (truncated)"
    return None


def _check_config(out_dir: Path, src: str, teacher: Teacher, identity: str, cfg: PseudoLabelConfig) -> None:
    """Write the run's settings, or check that an earlier run of this folder had the same ones (the same input,
    the same teacher weights, wherever they are now, and the same decoding and filters)."""
    source = src if _is_remote(src) else str(Path(src).resolve())
    mine = {"source": source, "teacher_sha256": teacher.sha, **cfg.filter_settings(), "teacher": identity}
    path = out_dir / CONFIG_NAME
    if path.is_file():
        try:
            theirs = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg}); remove it with the shards to start again") from None
        diff = [k for k in mine if k != "teacher" and theirs.get(k) != mine[k]]
        if diff:
            k = diff[0]
            raise DataError(f"{out_dir}: already holds pseudo-labels made with {k} {theirs.get(k)!r}, not "
                            f"{mine[k]!r}; use another output folder (or delete this one) to relabel")
        return
    atomic_write_text(path, json.dumps(mine, indent=1, ensure_ascii=False) + "\n")


def _progress_path(out_dir: Path, index: int) -> Path:
    return out_dir / PROGRESS_DIR / f"{index:06d}.json"


def _done_stats(out_dir: Path, n: int) -> dict[int, ShardStats]:
    done = {}
    for i in range(n):
        p = _progress_path(out_dir, i)
        if p.is_file():
            try:
                done[i] = ShardStats.from_dict(json.loads(p.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, TypeError, ValueError):
                log.warning(f"{p}: unreadable progress record; shard {i} is done again")
    return done


def pseudo_label_shar(src: str | os.PathLike, out_dir: str | os.PathLike, cfg: PseudoLabelConfig, *,
                      teacher: Teacher | None = None, references: Mapping[str, str] | None = None,
                      local_rank: int = 0) -> PseudoLabelReport:
    """Pseudo-label the Shar source ``src`` (a local folder or a remote source, see ``anyphone.data.remote``)
    into the Shar folder ``out_dir``: this process's shards (``cfg.rank::cfg.world_size``) that are not done yet.

    ``teacher``: an already loaded :class:`Teacher` (default: :func:`load_teacher` from ``cfg``).
    ``references``: cut id -> true transcript, to measure the labels' PER (kept and rejected apart); the
    references are never written.
    Raises DataError / ValueError / FileNotFoundError with one line naming the file and the problem.
    """
    src = str(src)
    out_dir = Path(out_dir)
    shards_by_field = shar_fields(src)
    if "recording" not in shards_by_field:
        raise DataError(f"{src}: no recording.NNNNNN.tar shards; pseudo-labelling needs the audio")
    n = len(shards_by_field["cuts"])
    shards = [{f: shards_by_field[f][i] for f in shards_by_field} for i in range(n)]
    if not _is_remote(src) and out_dir.resolve() == Path(src).resolve():
        raise DataError(f"{out_dir}: is the input folder; write the pseudo-labels to another one")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PROGRESS_DIR).mkdir(exist_ok=True)
    if teacher is None:
        teacher = load_teacher(cfg, local_rank)
    identity = teacher_identity(teacher, cfg)
    _check_config(out_dir, src, teacher, identity, cfg)

    mine = list(range(cfg.rank, n, cfg.world_size))
    done = _done_stats(out_dir, n)
    todo = [i for i in mine if i not in done]
    done_before = [i for i in mine if i in done]
    if done_before:
        log.info(f"{out_dir}: {len(done_before)} of this process's {len(mine)} shard(s) are done already; "
                 "continuing with the rest")
    bar = None
    if cfg.progress and cfg.rank == 0 and todo:
        from tqdm import tqdm

        counts = [_count_cuts(shards[i]["cuts"]) for i in todo]
        total = sum(counts) if all(c is not None for c in counts) else None
        bar = tqdm(total=total, unit="cut", desc=f"pseudo-labelling ({len(todo)} shards)", dynamic_ncols=True)
    failed: dict[int, str] = {}
    done_now: list[int] = []
    try:
        for i in todo:
            try:
                stats = _label_shard(i, shards[i], src, out_dir, teacher, identity, cfg, references, bar)
                why = _shard_incomplete(src, shards[i], stats)
            except DataError:
                raise
            except (OSError, EOFError, ValueError, RuntimeError, tarfile.TarError) as e:
                if isinstance(e, RuntimeError) and "out of memory" in str(e).lower():
                    raise
                why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if why:
                failed[i] = f"{shards[i]['cuts']}: {why}"
                log.warning(f"shard {i} not done ({failed[i]}); a rerun tries it again")
                continue
            atomic_write_text(_progress_path(out_dir, i), json.dumps(stats.to_dict()) + "\n")
            done[i] = stats
            done_now.append(i)
    finally:
        if bar is not None:
            bar.close()
    done = _done_stats(out_dir, n)  # other ranks' shards too
    totals = ShardStats()
    for s in done.values():
        totals.add(s)
    report = PseudoLabelReport(totals, identity, n, done_now, done_before, failed, complete=len(done) == n)
    if report.complete:
        atomic_write_text(out_dir / REPORT_NAME, json.dumps(
            {"teacher": identity, "shards": n, **totals.to_dict(), "settings": cfg.filter_settings()},
            indent=1, ensure_ascii=False) + "\n")
    return report
