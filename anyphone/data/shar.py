"""Reading and writing lhotse Shar directories, and turning user corpora into Shar.

A Shar directory holds numbered shards: ``cuts.000000.jsonl.gz`` plus one tar per data field
(``recording.000000.tar`` with FLAC audio here). Training reads several such directories, each
with a sampling weight (:func:`open_train_shars`).

User corpora come either as a Kaldi/Allosaurus-style directory (:func:`kaldi_dir_to_shar`) or as
lhotse recordings/supervisions manifests (:func:`lhotse_manifests_to_shar`). Both resample to
16 kHz mono, normalise the transcript with ``anyphone.text.ipa.normalize_ipa`` and skip bad
items with a one-line warning each; the returned :class:`CorpusReport` counts what happened.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.shar import SharWriter

from anyphone.data.fbank import SAMPLE_RATE

log = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^(?P<field>[A-Za-z0-9_\-]+)\.(?P<idx>\d{6})\.(?P<ext>.+)$")


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def parse_weighted_dir(spec: str) -> tuple[str, float]:
    """``"DIR"`` -> (DIR, 1.0); ``"DIR:WEIGHT"`` -> (DIR, WEIGHT). A suffix that is not a
    positive number is treated as part of the path (paths may contain ':')."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"Shar spec {spec!r}: weight {tail!r} must be a positive number")
        return head, weight
    return spec, 1.0


def parse_named_dir(spec: str) -> tuple[str, str]:
    """``"NAME=DIR"`` -> (NAME, DIR); a bare ``"DIR"`` is named after its last path component."""
    if "=" in spec:
        name, _, path = spec.partition("=")
        if not name or not path:
            raise ValueError(f"test set spec {spec!r}: expected NAME=DIR")
        return name, path
    return Path(spec).name, spec


def shar_fields(in_dir: str | Path) -> dict[str, list[str]]:
    """Shard files of a Shar directory by field: ``{"cuts": [...], "recording": [...], ...}``.

    Raises FileNotFoundError for a missing directory or one without ``cuts.NNNNNN.jsonl.gz`` and
    ValueError when fields have different shard counts.
    """
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"Shar directory {in_dir} does not exist")
    by_field: dict[str, dict[int, str]] = {}
    for p in in_dir.iterdir():
        m = _SHARD_RE.match(p.name)
        if m is None:
            continue
        by_field.setdefault(m["field"], {})[int(m["idx"])] = str(p)
    if "cuts" not in by_field:
        raise FileNotFoundError(f"Shar directory {in_dir} has no cuts.NNNNNN.jsonl.gz shards")
    n = len(by_field["cuts"])
    out = {}
    for name, shards in by_field.items():
        if len(shards) != n:
            raise ValueError(
                f"Shar directory {in_dir}: field {name!r} has {len(shards)} shards, expected {n} (as cuts)"
            )
        out[name] = [shards[i] for i in sorted(shards)]
    return out


def open_shar(
    in_dir: str | Path,
    *,
    shuffle_shards: bool = False,
    seed: int = 42,
    repeat: bool = False,
    rank: int = 0,
    world_size: int = 1,
    split_for_dataloading: bool = False,
) -> CutSet:
    """Lazily open one Shar directory as a CutSet (audio is attached in memory while iterating).

    With ``world_size > 1`` each rank keeps shards ``rank::world_size`` (only when there are at
    least ``world_size`` shards; otherwise every rank reads all of them and the sampler must split
    batches by rank, see :func:`shards_split_by_rank`). ``split_for_dataloading`` is lhotse's own
    per-node-and-worker split (only for samplers that run inside dataloader workers).
    """
    fields = shar_fields(in_dir)
    if shards_split_by_rank(fields, world_size):
        fields = {k: v[rank::world_size] for k, v in fields.items()}
    cuts = CutSet.from_shar(
        fields=fields,
        split_for_dataloading=split_for_dataloading,
        shuffle_shards=shuffle_shards,
        stateful_shuffle=True,
        seed=seed,
    )
    if repeat:
        cuts = cuts.repeat(preserve_id=True)
    return cuts


def shards_split_by_rank(fields_or_dir: dict[str, list[str]] | str | Path, world_size: int) -> bool:
    """True when :func:`open_shar` splits this directory's shards across ``world_size`` ranks."""
    fields = fields_or_dir if isinstance(fields_or_dir, dict) else shar_fields(fields_or_dir)
    return world_size > 1 and len(fields["cuts"]) >= world_size


def open_train_shars(
    specs: Sequence[str | tuple[str, float]],
    *,
    seed: int = 42,
    shuffle_shards: bool = True,
    repeat: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> CutSet:
    """Open several Shar directories and multiplex them by weight.

    Args:
      specs: ``"DIR[:WEIGHT]"`` strings or (dir, weight) pairs.
      repeat: repeat each source forever (so the weights hold for the whole run; the stream is
        infinite and training must stop by step count). Without it each source is read once per
        epoch and the mux goes on with the others when one runs out.
    """
    pairs = [parse_weighted_dir(s) if isinstance(s, str) else (str(s[0]), float(s[1])) for s in specs]
    if not pairs:
        raise ValueError("open_train_shars: no Shar directories given")
    sets = [
        open_shar(
            d,
            shuffle_shards=shuffle_shards,
            seed=seed + i,
            repeat=repeat,
            rank=rank,
            world_size=world_size,
        )
        for i, (d, _) in enumerate(pairs)
    ]
    if len(sets) == 1:
        return sets[0]
    return CutSet.mux(*sets, weights=[w for _, w in pairs], seed=seed)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def write_shar(cuts: Iterable, out_dir: str | Path, shard_size: int = 1000) -> int:
    """Write cuts (with loadable audio) to a Shar directory with FLAC audio; returns the count.

    Custom cut fields (e.g. language/voice/speed) go into the cuts manifest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    with SharWriter(str(out_dir), fields={"recording": "flac"}, shard_size=shard_size) as writer:
        for cut in cuts:
            writer.write(cut)
            n += 1
    return n


def make_cut(
    cut_id: str,
    samples: np.ndarray,
    text: str,
    language: str = "",
    custom: dict | None = None,
) -> MonoCut:
    """An in-memory 16 kHz mono cut (FLAC bytes) with one supervision covering it.

    ``samples``: (S,) float in [-1, 1] at 16 kHz. The language is stored both on the
    supervision and as ``cut.custom["language"]``.
    """
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    rec = Recording.from_bytes(buf.getvalue(), recording_id=cut_id)
    sup = SupervisionSegment(
        id=cut_id,
        recording_id=cut_id,
        start=0.0,
        duration=rec.duration,
        channel=0,
        text=text,
        language=language or None,
    )
    extra = {"language": language}
    extra.update(custom or {})
    return MonoCut(
        id=cut_id,
        start=0.0,
        duration=rec.duration,
        channel=0,
        recording=rec,
        supervisions=[sup],
        custom=extra,
    )


# ----------------------------------------------------------------------------------------------
# User corpora
# ----------------------------------------------------------------------------------------------


PROBLEMS = {
    "missing_audio": "audio file does not exist",
    "empty_audio": "audio file is empty",
    "corrupt_audio": "audio file cannot be decoded",
    "no_audio_entry": "utterance is in the transcripts but has no audio entry",
    "no_transcript": "utterance has audio but no transcript",
    "unknown_symbols": "transcript has symbols outside the IPA inventory",
    "empty_transcript": "transcript is empty after IPA normalisation",
}


@dataclass
class CorpusReport:
    """What a corpus conversion did. ``problems[kind]`` lists the utterance ids per problem kind
    (kinds: see ``PROBLEMS``); ``unknown_symbols`` counts every dropped out-of-inventory symbol."""

    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    problems: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in PROBLEMS})
    unknown_symbols: Counter = field(default_factory=Counter)
    out_dir: str = ""

    def add(self, kind: str, utt_id: str, detail: str, skipped: bool = True) -> None:
        self.problems[kind].append(utt_id)
        if skipped:  # with on_unknown='drop' an utterance is kept despite the problem
            self.skipped += 1
        action = "skipped" if skipped else "kept"
        log.warning(f"{utt_id}: {PROBLEMS[kind]} ({detail}); {action}")

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.problems.items()}

    def summary(self) -> str:
        parts = [f"wrote {self.written} utterances ({self.seconds / 3600:.2f} h) to {self.out_dir}",
                 f"skipped {self.skipped}"]
        parts += [f"{k}={len(v)}" for k, v in self.problems.items() if v]
        if self.unknown_symbols:
            top = ", ".join(f"{s!r}x{c}" for s, c in self.unknown_symbols.most_common(10))
            parts.append(f"unknown symbols: {top}")
        return "; ".join(parts)


class _AudioProblem(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _to_mono_16k(samples: np.ndarray, sr: int) -> np.ndarray:
    """(S,) or (S, C) float -> (S,) float32 at 16 kHz (channels averaged)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(int(sr), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(sr) // g).astype(np.float32)
    return x


def read_audio_file(path: str | Path) -> np.ndarray:
    """Read an audio file as 16 kHz mono float32 (S,). Raises _AudioProblem on bad input."""
    p = Path(path)
    if not p.is_file():
        raise _AudioProblem("missing_audio", str(p))
    if p.stat().st_size == 0:
        raise _AudioProblem("empty_audio", f"{p}: 0 bytes")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=False)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "cannot decode this file"
        try:  # formats libsndfile cannot read (e.g. m4a) may still open with lhotse's backends
            rec = Recording.from_file(str(p))
            data, sr = rec.load_audio(), rec.sampling_rate
        except Exception:  # noqa: BLE001
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise _AudioProblem("corrupt_audio", f"{p}: {msg}") from e
    return _check_samples(_to_mono_16k(data, sr), str(p))


def _check_samples(x: np.ndarray, where: str) -> np.ndarray:
    if x.size == 0:
        raise _AudioProblem("empty_audio", f"{where}: 0 samples")
    if not np.all(np.isfinite(x)):
        raise _AudioProblem("corrupt_audio", f"{where}: NaN or inf samples")
    return x


def _read_table(path: Path) -> dict[str, str]:
    """Kaldi table ``utt_id rest-of-line`` -> dict. Blank lines are ignored; for a line with an id
    only, the value is ''."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            key, _, value = line.partition(" ")
            if "\t" in key:  # tab-separated tables
                key, _, value = line.partition("\t")
            table[key] = value.strip()
    return table


def _normalize_text(text: str, remove_diacritics: bool) -> tuple[str, Counter]:
    from anyphone.text.ipa import normalize_ipa

    unknown: Counter = Counter()
    out = normalize_ipa(text, remove_diacritics=remove_diacritics, unknown=unknown)
    return out, unknown


def _convert(
    items: Iterator[tuple[str, Callable[[], np.ndarray], str | None, str]],
    out_dir: Path,
    report: CorpusReport,
    *,
    shard_size: int,
    remove_diacritics: bool,
    on_unknown: str,
) -> CorpusReport:
    """items: (utt_id, load_audio, raw_text or None, language). Writes good items to Shar."""
    if on_unknown not in ("skip", "drop"):
        raise ValueError(f"on_unknown={on_unknown!r}: expected 'skip' or 'drop'")

    def good_cuts() -> Iterator[MonoCut]:
        for utt_id, load, raw, lang in items:
            if raw is None:
                report.add("no_transcript", utt_id, "no line in the transcript file")
                continue
            text, unknown = _normalize_text(raw, remove_diacritics)
            if unknown:
                report.unknown_symbols.update(unknown)
                syms = " ".join(f"{s!r}" for s in sorted(unknown))
                report.add("unknown_symbols", utt_id, f"{syms} in {raw!r}", skipped=on_unknown == "skip")
                if on_unknown == "skip":
                    continue
            if not text:
                report.add("empty_transcript", utt_id, f"text {raw!r}")
                continue
            try:
                samples = load()
            except _AudioProblem as e:
                report.add(e.kind, utt_id, e.detail)
                continue
            cut = make_cut(utt_id, samples, text, lang)
            report.written += 1
            report.seconds += cut.duration
            yield cut

    write_shar(good_cuts(), out_dir, shard_size=shard_size)
    if report.written == 0:
        log.warning(f"{out_dir}: no utterance was written")
    print(f"[anyphone] {report.summary()}")
    return report


def kaldi_dir_files(data_dir: str | Path) -> tuple[Path, Path, Path | None]:
    """(audio list, transcripts, language list or None) of a Kaldi/Allosaurus-style directory.

    Raises FileNotFoundError, naming the directory, when it does not exist, is empty, or lacks the audio list
    (``wave`` or ``wav.scp``) or the transcripts (``text``).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"corpus directory {data_dir} does not exist")
    if not any(data_dir.iterdir()):
        raise FileNotFoundError(f"corpus directory {data_dir} is empty: expected 'wave' (or 'wav.scp') and 'text'")
    wave_file = next((data_dir / n for n in ("wave", "wav.scp") if (data_dir / n).is_file()), None)
    if wave_file is None:
        raise FileNotFoundError(f"corpus directory {data_dir} has no 'wave' or 'wav.scp' file (lines: utt_id path)")
    text_file = data_dir / "text"
    if not text_file.is_file():
        raise FileNotFoundError(f"corpus directory {data_dir} has no 'text' file (lines: utt_id phones)")
    lang_file = next((data_dir / n for n in ("lang", "utt2lang") if (data_dir / n).is_file()), None)
    return wave_file, text_file, lang_file


def kaldi_dir_to_shar(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    language: str = "",
    remove_diacritics: bool = False,
    on_unknown: str = "skip",
) -> CorpusReport:
    """Convert an Allosaurus/Kaldi-style directory to Shar (16 kHz mono FLAC, normalised IPA).

    Expected files in ``data_dir``: ``wave`` or ``wav.scp`` (``utt_id path``; relative paths are
    resolved against ``data_dir``), ``text`` (``utt_id phones``, spaces allowed), optionally
    ``lang`` or ``utt2lang`` (``utt_id lang``). ``language`` is the default for utterances
    without one. ``on_unknown``: 'skip' drops utterances with out-of-inventory symbols, 'drop'
    keeps them without those symbols. Bad utterances are skipped with a warning.

    Raises FileNotFoundError when the directory does not exist, is empty, or lacks the audio
    list or the transcripts.
    """
    data_dir = Path(data_dir)
    wave_file, text_file, lang_file = kaldi_dir_files(data_dir)
    waves = _read_table(wave_file)
    texts = _read_table(text_file)
    if not waves and not texts:
        raise FileNotFoundError(f"corpus directory {data_dir}: {wave_file.name} and text are empty")
    langs = _read_table(lang_file) if lang_file else {}

    report = CorpusReport(out_dir=str(out_dir))

    def loader(path_str: str) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if path_str.endswith("|"):
                raise _AudioProblem("corrupt_audio", f"{path_str!r}: Kaldi pipe commands are not supported")
            p = Path(path_str)
            return read_audio_file(p if p.is_absolute() else data_dir / p)

        return load

    def items() -> Iterator:
        for utt_id in texts:
            if utt_id not in waves:
                report.add("no_audio_entry", utt_id, f"not in {wave_file}")
        for utt_id, path_str in waves.items():
            if not path_str:
                report.add("missing_audio", utt_id, f"no path in {wave_file}")
                continue
            yield utt_id, loader(path_str), texts.get(utt_id), langs.get(utt_id, language)

    return _convert(items(), Path(out_dir), report, shard_size=shard_size,
                    remove_diacritics=remove_diacritics, on_unknown=on_unknown)


def lhotse_manifests_to_shar(
    recordings: str | Path,
    supervisions: str | Path,
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    language: str = "",
    remove_diacritics: bool = False,
    on_unknown: str = "skip",
) -> CorpusReport:
    """Convert lhotse ``recordings.jsonl.gz`` + ``supervisions.jsonl.gz`` to Shar.

    Each supervision becomes one utterance (its time span of its recording, channels mixed to
    mono, 16 kHz). The supervision's ``language`` wins over ``language``. Same bad-input handling
    as :func:`kaldi_dir_to_shar`.
    """
    from lhotse import RecordingSet, SupervisionSet

    for p in (recordings, supervisions):
        if not Path(p).is_file():
            raise FileNotFoundError(f"lhotse manifest {p} does not exist")
    recs = {r.id: r for r in RecordingSet.from_file(recordings)}
    sups = list(SupervisionSet.from_file(supervisions))
    if len(sups) == 0:
        raise FileNotFoundError(f"lhotse manifest {supervisions} has no supervisions")
    report = CorpusReport(out_dir=str(out_dir))

    def loader(rec: Recording, sup: SupervisionSegment) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            for src in rec.sources:
                if src.type == "file":
                    p = Path(src.source)
                    if not p.is_file():
                        raise _AudioProblem("missing_audio", str(p))
                    if p.stat().st_size == 0:
                        raise _AudioProblem("empty_audio", f"{p}: 0 bytes")
            try:
                data = rec.load_audio(offset=sup.start, duration=sup.duration)
            except Exception as e:  # any decoder failure means "cannot decode"
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise _AudioProblem("corrupt_audio", f"recording {rec.id}: {msg}") from e
            return _check_samples(_to_mono_16k(data.T, rec.sampling_rate), f"recording {rec.id}")

        return load

    def items() -> Iterator:
        for sup in sups:
            if sup.recording_id not in recs:
                report.add("no_audio_entry", sup.id, f"recording {sup.recording_id!r} not in {recordings}")
                continue
            yield sup.id, loader(recs[sup.recording_id], sup), sup.text or "", sup.language or language

    return _convert(items(), Path(out_dir), report, shard_size=shard_size,
                    remove_diacritics=remove_diacritics, on_unknown=on_unknown)
