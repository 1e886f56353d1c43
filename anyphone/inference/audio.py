"""Audio input for inference: robust loading, streaming chunks for long files, and input expansion.

Reading goes through soundfile (libsndfile): WAV, FLAC, OGG/Vorbis/Opus and MP3 (libsndfile >= 1.1), any sample
rate, any channel count. Output is always mono float32 at ``target_sr`` (16 kHz for ZIPA models):

* more than one channel is averaged to mono, with a one-line WARNING on the ``anyphone.audio`` logger;
* other rates are converted with scipy's polyphase resampler (``resample_poly``, Kaiser-windowed sinc).

Problems raise :class:`AudioError` (one line: ``<path>: <problem>``): missing file, empty file, a file that is
not audio, no samples, NaN or inf samples.

Silence is not an error by default, because a silent file is valid input that just has nothing to recognise.
A file whose peak amplitude is below ``silence_threshold`` (default 1e-4, about -80 dBFS) triggers, according
to ``on_silence``:

* ``"warn"`` (default): a :class:`SilentAudioWarning` via :mod:`warnings` (filter it or turn it into an error
  with the warnings machinery), and the samples are returned;
* ``"error"``: raise :class:`SilentAudioError` (a subclass of :class:`AudioError`);
* ``"ignore"``: nothing.

Public API::

    load_audio(path, target_sr=16000, *, on_silence="warn") -> (np.ndarray (S,) float32, AudioInfo)
    iter_audio_chunks(path, chunk_seconds, overlap_seconds=0.0, target_sr=16000) -> Iterator[AudioChunk]
    expand_inputs(spec, recursive=False) -> list[Path]
    AudioError, SilentAudioError, SilentAudioWarning, AudioInfo, AudioChunk, AUDIO_EXTENSIONS
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "AUDIO_EXTENSIONS",
    "LIST_EXTENSIONS",
    "AudioChunk",
    "AudioError",
    "AudioInfo",
    "SilentAudioError",
    "SilentAudioWarning",
    "expand_inputs",
    "iter_audio_chunks",
    "load_audio",
]

logger = logging.getLogger("anyphone.audio")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".sph", ".w64")
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".scp")
DEFAULT_SILENCE_THRESHOLD = 1e-4


class AudioError(ValueError):
    """A file that cannot be used as audio input. ``str(e)`` is ``"<path>: <problem>"`` on one line."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class SilentAudioError(AudioError):
    """The whole file is (digitally) silent; raised only with ``on_silence="error"``."""


class SilentAudioWarning(UserWarning):
    """The whole file is (digitally) silent; emitted with ``on_silence="warn"`` (the default)."""


@dataclass
class AudioInfo:
    """What was read and what was done to it."""

    path: Path
    sample_rate: int  # of the file
    channels: int  # of the file
    frames: int  # samples per channel in the file
    format: str  # libsndfile major format, e.g. "WAV", "FLAC", "OGG", "MPEG"
    subtype: str  # e.g. "PCM_16", "VORBIS"
    target_sr: int
    num_samples: int  # length of the returned mono array at target_sr
    resampled: bool
    mixed_down: bool
    peak: float  # max |sample| of the returned array
    silent: bool

    @property
    def duration(self) -> float:
        """Duration in seconds."""
        return self.num_samples / self.target_sr


@dataclass
class AudioChunk:
    """One window of a long file, at the target rate.

    ``samples`` is (S,) float32 mono; ``start`` is its first sample's index in the whole resampled signal, so
    ``start / sample_rate`` is its time offset in seconds. Consecutive chunks overlap by ``overlap_seconds``.
    """

    samples: np.ndarray
    start: int
    sample_rate: int
    index: int
    is_last: bool

    @property
    def start_seconds(self) -> float:
        return self.start / self.sample_rate

    @property
    def end_seconds(self) -> float:
        return (self.start + len(self.samples)) / self.sample_rate


# --------------------------------------------------------------------------------------------------------
# helpers


def _open(path: Path):
    """Open with soundfile, turning every failure into a one-line AudioError."""
    import soundfile as sf

    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, expected an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = detail.replace(f"Error opening {str(path)!r}: ", "")
        raise AudioError(path, f"not a readable audio file ({detail}); expected WAV, FLAC, OGG or MP3") from None


def _ratio(sr: int, target_sr: int) -> tuple[int, int]:
    g = math.gcd(int(sr), int(target_sr))
    return int(target_sr) // g, int(sr) // g


def _resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    import scipy.signal

    if up == down:
        return x
    return scipy.signal.resample_poly(x, up, down).astype(np.float32, copy=False)


def _to_mono(block: np.ndarray) -> np.ndarray:
    """(S, C) -> (S,) by averaging channels (averaging keeps the level in range, unlike summing)."""
    return block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)


def _check_finite(path: Path, x: np.ndarray, offset_s: float = 0.0, sr: int = 1) -> None:
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        kind = "NaN" if np.isnan(x[bad]) else "inf"
        raise AudioError(path, f"{kind} sample at {offset_s + bad / sr:.3f} s; expected finite samples")


def _handle_silence(path: Path, peak: float, threshold: float, on_silence: str) -> None:
    if on_silence == "ignore":
        return
    problem = f"all samples are silent (peak {peak:.2e} < {threshold:g})"
    if on_silence == "error":
        raise SilentAudioError(path, problem)
    warnings.warn(f"{path}: {problem}", SilentAudioWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------------
# public API


def load_audio(
    path: str | os.PathLike,
    target_sr: int = 16000,
    *,
    on_silence: str = "warn",
    silence_threshold: float = DEFAULT_SILENCE_THRESHOLD,
) -> tuple[np.ndarray, AudioInfo]:
    """Read a whole file as mono float32 at ``target_sr``.

    Args:
        path: audio file (WAV/FLAC/OGG/MP3 or anything else libsndfile reads).
        target_sr: output rate in Hz.
        on_silence: "warn" | "error" | "ignore", see the module docstring.
        silence_threshold: peak amplitude below which the file counts as silent.
    Returns:
        samples: (S,) float32, S = ceil(frames * target_sr / file_rate); info: :class:`AudioInfo`.
    Raises:
        AudioError: missing/empty/unreadable file, no samples, NaN/inf samples.
        SilentAudioError: silent file with on_silence="error".
    """
    if on_silence not in ("warn", "error", "ignore"):
        raise ValueError(f"on_silence={on_silence!r}; expected 'warn', 'error' or 'ignore'")
    p = Path(path)
    with _open(p) as f:
        sr, channels, fmt, subtype = f.samplerate, f.channels, f.format, f.subtype
        try:
            data = f.read(dtype="float32", always_2d=True)
        except (RuntimeError, ValueError) as e:
            raise AudioError(p, f"cannot decode audio ({str(e).strip().splitlines()[0]})") from None
    frames = data.shape[0]
    if frames == 0:
        raise AudioError(p, "no audio samples (0 frames)")
    _check_finite(p, data.reshape(-1), sr=sr * channels)
    x = _to_mono(data)
    del data
    if channels > 1:
        logger.warning("%s: %d channels mixed down to mono", p, channels)
    up, down = _ratio(sr, target_sr)
    y = np.ascontiguousarray(_resample(x, up, down), dtype=np.float32)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    silent = peak < silence_threshold
    if silent:
        _handle_silence(p, peak, silence_threshold, on_silence)
    info = AudioInfo(p, int(sr), int(channels), int(frames), str(fmt), str(subtype), int(target_sr), int(y.size),
                     up != down, channels > 1, peak, silent)
    return y, info


def iter_audio_chunks(
    path: str | os.PathLike,
    chunk_seconds: float,
    overlap_seconds: float = 0.0,
    target_sr: int = 16000,
    *,
    block_seconds: float = 10.0,
    on_silence: str = "warn",
    silence_threshold: float = DEFAULT_SILENCE_THRESHOLD,
) -> Iterator[AudioChunk]:
    """Yield overlapping mono windows of a (long) file without holding the whole file in memory.

    The file is read in blocks of ``block_seconds`` into a rolling buffer that never holds much more than one
    chunk. Each chunk is resampled with enough context on both sides (and on the same output grid) that the
    chunks equal the matching slices of ``load_audio(path, target_sr)[0]`` up to float rounding.

    Chunk k covers target samples [k*step, k*step + chunk) with chunk = round(chunk_seconds*target_sr) and
    step = chunk - round(overlap_seconds*target_sr); the last chunk is shorter, and a final chunk that would
    lie wholly inside the previous one is not produced.

    Silence is judged on the whole file once it has been read: with on_silence="warn" a SilentAudioWarning is
    emitted after the last chunk, with "error" a SilentAudioError is raised then (after all chunks were
    yielded), so a caller streaming results can still tell a silent file apart.

    Raises:
        AudioError: as :func:`load_audio`; NaN/inf is reported when the block holding it is read.
        ValueError: chunk_seconds <= 0 or overlap not in [0, chunk_seconds).
    """
    chunk = round(chunk_seconds * target_sr)
    overlap = round(overlap_seconds * target_sr)
    if chunk <= 0:
        raise ValueError(f"chunk_seconds={chunk_seconds}; expected > 0")
    if not 0 <= overlap < chunk:
        raise ValueError(f"overlap_seconds={overlap_seconds}; expected 0 <= overlap < chunk_seconds={chunk_seconds}")
    if on_silence not in ("warn", "error", "ignore"):
        raise ValueError(f"on_silence={on_silence!r}; expected 'warn', 'error' or 'ignore'")
    step = chunk - overlap
    p = Path(path)
    with _open(p) as f:
        sr, channels = f.samplerate, f.channels
        if channels > 1:
            logger.warning("%s: %d channels mixed down to mono", p, channels)
        up, down = _ratio(sr, target_sr)
        # Context (file samples) each side so the resampling filter (half-length 10*max(up, down) at the
        # upsampled rate) sees the same input as when the whole file is resampled at once.
        margin = 10 * max(up, down) // up + 2 if up != down else 0
        block = max(1, int(block_seconds * sr))

        buf = np.zeros(0, dtype=np.float32)  # file samples [buf_start, buf_start + len(buf))
        buf_start = 0
        eof = False
        peak = 0.0
        k = 0
        prev_end = 0

        def read_more() -> bool:
            nonlocal buf, eof
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except (RuntimeError, ValueError) as e:
                raise AudioError(p, f"cannot decode audio ({str(e).strip().splitlines()[0]})") from None
            if data.shape[0] == 0:
                eof = True
                return False
            _check_finite(p, data.reshape(-1), offset_s=(buf_start + len(buf)) / sr, sr=sr * channels)
            buf = np.concatenate([buf, _to_mono(data)])
            if data.shape[0] < block:
                eof = True
            return True

        while True:
            s = k * step
            # File-sample range needed for target samples [s, s + chunk), plus filter context.
            need_hi = -(-(s + chunk) * down // up) + margin
            while not eof and buf_start + len(buf) < need_hi:
                read_more()
            total_file = buf_start + len(buf) if eof else None
            total_target = -(-total_file * up // down) if total_file is not None else None
            if total_file == 0:
                raise AudioError(p, "no audio samples (0 frames)")
            e = s + chunk if total_target is None else min(s + chunk, total_target)
            if e <= s or (k > 0 and e <= prev_end):
                break
            # Start the resampled segment on a multiple of `down` so its output lands on the global grid.
            lo = max(0, (s * down // up - margin) // down * down)
            hi = need_hi if total_file is None else min(need_hi, total_file)
            seg = buf[lo - buf_start: hi - buf_start]
            out = _resample(seg, up, down)
            off = s - lo * up // down
            samples = np.ascontiguousarray(out[off: off + (e - s)], dtype=np.float32)
            if samples.size:
                peak = max(peak, float(np.max(np.abs(samples))))
            is_last = total_target is not None and e >= total_target
            yield AudioChunk(samples, s, int(target_sr), k, is_last)
            prev_end = e
            k += 1
            if is_last:
                break
            # Drop what no later chunk needs (keep from the next chunk's lo).
            next_lo = max(0, ((k * step) * down // up - margin) // down * down)
            if next_lo > buf_start:
                buf = buf[next_lo - buf_start:]
                buf_start = next_lo
    if peak < silence_threshold:
        _handle_silence(p, peak, silence_threshold, on_silence)


def expand_inputs(spec: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand the CLI's ``-i FILE|DIR|LIST`` into audio file paths.

    * a directory: its audio files (extension in AUDIO_EXTENSIONS, case-insensitive) sorted by name
      (with ``recursive``, by relative path through sub-folders);
    * a list file (``.txt``, ``.lst``, ``.list``, ``.scp``): one path per line; blank lines and lines starting
      with ``#`` are skipped; relative paths are taken relative to the list file's folder, else to the current
      directory; in ``.scp`` files a line ``<id> <path>`` uses the last field;
    * any other existing file: itself (its readability is checked when it is loaded);
    * several specs (an iterable): the concatenation, in order.

    Raises:
        AudioError: a path that does not exist, a list entry that does not exist, or a folder without audio.
    """
    if not isinstance(spec, (str, os.PathLike)):
        out: list[Path] = []
        for s in spec:
            out.extend(expand_inputs(s, recursive=recursive))
        return out
    p = Path(spec).expanduser()
    if p.is_dir():
        it = p.rglob("*") if recursive else p.iterdir()
        files = sorted((q for q in it if q.is_file() and q.suffix.lower() in AUDIO_EXTENSIONS),
                       key=lambda q: q.relative_to(p).as_posix())
        if not files:
            raise AudioError(p, f"folder holds no audio files (looked for {', '.join(AUDIO_EXTENSIONS)})")
        return files
    if not p.exists():
        raise AudioError(p, "no such file or folder")
    if p.suffix.lower() in LIST_EXTENSIONS:
        out = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if p.suffix.lower() == ".scp":
                entry = entry.split()[-1]
            q = Path(entry).expanduser()
            if not q.is_absolute():
                q = p.parent / q if (p.parent / q).exists() else Path.cwd() / q
            if not q.is_file():
                raise AudioError(p, f"line {n}: {entry} not found (relative paths are taken from {p.parent})")
            out.append(q)
        if not out:
            raise AudioError(p, "list file holds no paths")
        return out
    return [p]
