"""Audio input for inference: robust loading, streaming chunks for long files, and input expansion.

Reading goes through soundfile (libsndfile): WAV, FLAC, OGG/Vorbis/Opus and MP3 (libsndfile >= 1.1), any sample
rate, any channel count. Output is always mono float32 at ``target_sr`` (16 kHz for ZIPA models):

* more than one channel is averaged to mono, with a one-line WARNING on the ``anyphone.audio`` logger;
* other rates are converted with scipy's polyphase resampler (``resample_poly``, Kaiser-windowed sinc).

Problems raise :class:`AudioError` (one line: ``<path>: <problem>``): missing file, dangling link, empty file,
a file that is not audio, a header with an implausible sample rate (outside 1000..384000 Hz: a corrupt header
would otherwise make the resampler allocate hundreds of GiB, or stretch a second of audio over hours), no
samples, NaN or inf samples. Paths in messages go through :func:`escape_name`, so a name with a newline or
bytes that are not UTF-8 still gives one printable line.

A truncated file (fewer samples than its header promises, or a stream that stops decoding part-way) is not an
error: what is there is decoded, with a one-line WARNING on the ``anyphone.audio`` logger naming the file.

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
    expand_inputs(spec, recursive=False, failures=None) -> list[Path]
    escape_name(path) -> str
    AudioError, SilentAudioError, SilentAudioWarning, AudioInfo, AudioChunk, AUDIO_EXTENSIONS
"""

from __future__ import annotations

import logging
import math
import os
import re
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
    "escape_name",
    "expand_inputs",
    "iter_audio_chunks",
    "load_audio",
]

logger = logging.getLogger("anyphone.audio")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".sph", ".w64")
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".scp")
DEFAULT_SILENCE_THRESHOLD = 1e-4
# Sample rates outside this range are taken for a corrupt header: no recorder writes them, and at 2**31 Hz the
# resampler alone would need hundreds of GiB while 1 Hz turns a second of audio into hours.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
# libsndfile's header log says "data : <size in header> (should be <size present>)" for a short WAV/AIFF file.
_SHORT_DATA_RE = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Header sizes that streaming writers leave when the length is not known yet; they do not mean truncation.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 8)


def escape_name(name: str | os.PathLike | bytes) -> str:
    """A file name as one printable line that also fits in a TSV field.

    Bytes that are not UTF-8 (Python keeps them as surrogates, ``os.fsdecode``) become ``\\xNN``, tab, newline
    and carriage return ``\\t``, ``\\n``, ``\\r``, other control characters ``\\xNN``, other unprintable
    characters (U+2028 ...) ``\\uNNNN`` and a backslash ``\\\\``. Every ``\\xNN`` stands for the byte NN of the
    name on disk, so the escaping can be undone.
    """
    text = os.fsdecode(name) if isinstance(name, bytes) else os.fspath(name)
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode keeps it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable():  # e.g. U+2028, which str.splitlines() would take for a line break
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


class AudioError(ValueError):
    """A file that cannot be used as audio input. ``str(e)`` is ``"<path>: <problem>"`` on one line (the path
    escaped with :func:`escape_name`)."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{escape_name(path)}: {problem}")


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


def _dangling_target(path: Path) -> str | None:
    """The target of ``path`` if it is a symbolic link to nothing, else None."""
    if path.is_symlink() and not path.exists():
        try:
            return escape_name(os.readlink(path))
        except OSError:
            return "?"
    return None


def _open(path: Path):
    """Open with soundfile, turning every failure into a one-line AudioError."""
    import soundfile as sf

    target = _dangling_target(path)
    if target is not None:
        raise AudioError(path, f"dangling symbolic link (its target {target} does not exist)")
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, expected an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        # bytes, because soundfile encodes a str name as strict UTF-8 and so cannot open a name that is not
        name = os.fsencode(path)
        f = sf.SoundFile(name)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = detail.replace(f"Error opening {name!r}: ", "")
        raise AudioError(path, f"not a readable audio file ({detail}); expected WAV, FLAC, OGG or MP3") from None
    if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
        f.close()
        raise AudioError(path, f"sample rate {f.samplerate} Hz in the header is implausible (expected "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz); the header is probably corrupt")
    return f


def _header_shortfall(f) -> str | None:
    """A note when the header of ``f`` promises more audio data than the file holds (libsndfile then reads
    what is there without complaint), else None."""
    try:
        log_text = f.extra_info
    except Exception:  # noqa: BLE001 - only a diagnostic; some formats have no header log
        return None
    for claimed, present in _SHORT_DATA_RE.findall(log_text):
        claimed_n, present_n = int(claimed), int(present)
        if claimed_n not in _UNKNOWN_SIZES and present_n < claimed_n:
            return f"the header promises {claimed_n} bytes of audio data, the file holds {present_n}"
    return None


def _read_block(f, path: Path, frames: int) -> tuple[np.ndarray, str | None]:
    """Read up to ``frames`` frames (-1: all that are left) as (S, C) float32. On a decoding error (a FLAC or MP3 file cut short
    loses sync) the block is read again in 0.1 s pieces up to the error, so only the damaged end is lost;
    returns (what was read, the error text) then, (block, None) otherwise."""
    start = f.tell() if f.seekable() else None
    try:
        return f.read(frames, dtype="float32", always_2d=True), None
    except (RuntimeError, ValueError) as e:
        detail = str(e).strip().splitlines()[0].removeprefix("Error : ") if str(e).strip() else type(e).__name__
    pieces = []
    if start is not None:
        step = max(1, f.samplerate // 10)
        limit = frames if frames >= 0 else math.inf  # -1: to the end
        try:
            f.seek(start)
            got = 0
            while got < limit:
                piece = f.read(int(min(step, limit - got)), dtype="float32", always_2d=True)
                if piece.shape[0] == 0:
                    break
                pieces.append(piece)
                got += piece.shape[0]
        except (RuntimeError, ValueError):
            pass
    data = np.concatenate(pieces) if pieces else np.zeros((0, f.channels), dtype=np.float32)
    return data, detail


def _warn_truncated(path: Path, why: str, seconds: float) -> None:
    logger.warning("%s: truncated file (%s); decoding the %.2f s that are there", escape_name(path), why, seconds)


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
        data, error = _read_block(f, p, -1)
        promised = f.frames
        short = _header_shortfall(f)
    frames = data.shape[0]
    if error is not None and frames == 0:
        raise AudioError(p, f"cannot decode audio ({error})")
    if frames == 0:
        raise AudioError(p, "no audio samples (0 frames)")
    if error is not None:
        _warn_truncated(p, f"decoding stopped after {frames} of {promised} frames: {error}", frames / sr)
    elif short is not None:
        _warn_truncated(p, short, frames / sr)
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

        read_total = 0

        def read_more() -> bool:
            nonlocal buf, eof, read_total
            data, error = _read_block(f, p, block)
            n = data.shape[0]
            if error is not None and read_total + n == 0:
                raise AudioError(p, f"cannot decode audio ({error})")
            if n:
                _check_finite(p, data.reshape(-1), offset_s=(buf_start + len(buf)) / sr, sr=sr * channels)
                buf = np.concatenate([buf, _to_mono(data)])
                read_total += n
            if error is not None:  # a file cut short: keep what decoded and end the stream there
                _warn_truncated(p, f"decoding stopped after {read_total} of {f.frames} frames: {error}",
                                read_total / sr)
                eof = True
            elif n < block:
                eof = True
                short = _header_shortfall(f)
                if short is not None:
                    _warn_truncated(p, short, read_total / sr)
            return n > 0

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


def expand_inputs(spec: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = False,
                  failures: list[AudioError] | None = None) -> list[Path]:
    """Expand the CLI's ``-i FILE|DIR|LIST`` into audio file paths.

    * a directory: its audio files (extension in AUDIO_EXTENSIONS, case-insensitive) sorted by name
      (with ``recursive``, by relative path through sub-folders);
    * a list file (``.txt``, ``.lst``, ``.list``, ``.scp``): one path per line, UTF-8; blank lines and lines
      starting with ``#`` are skipped; relative paths are taken relative to the list file's folder, else to the
      current directory; in ``.scp`` files a line ``<id> <path>`` uses the last field (Kaldi pipe commands,
      ``... |``, are refused: nothing read from a data file is ever run);
    * any other existing file: itself (its readability is checked when it is loaded);
    * several specs (an iterable): the concatenation, in order.

    With ``failures`` (a list), entries that cannot be used are appended to it as AudioErrors and the rest is
    returned, so one missing line of a list does not stop the others: a list entry that does not exist or is a
    pipe (``list.txt: line N: ...``) and a dangling symbolic link in a folder. Without it the first one raises.

    Raises:
        AudioError: a path that does not exist, a list file that is not UTF-8 text, a folder without audio
            (and without ``failures``, a bad list entry).
    """
    if not isinstance(spec, (str, os.PathLike)):
        out: list[Path] = []
        for s in spec:
            out.extend(expand_inputs(s, recursive=recursive, failures=failures))
        return out
    p = Path(spec).expanduser()
    bad: list[AudioError] = []

    def fail(e: AudioError) -> None:
        if failures is None:
            raise e
        bad.append(e)

    if p.is_dir():
        it = p.rglob("*") if recursive else p.iterdir()
        files, dangling = [], []
        for q in it:
            if q.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            if q.is_file():
                files.append(q)
            elif _dangling_target(q) is not None:
                dangling.append(q)
        files.sort(key=lambda q: q.relative_to(p).as_posix())
        if failures is not None:  # without a failure list they are skipped, as before
            for q in sorted(dangling, key=lambda q: q.relative_to(p).as_posix()):
                bad.append(AudioError(q, f"dangling symbolic link (its target {_dangling_target(q)} does not "
                                      "exist)"))
        if not files and not bad:
            raise AudioError(p, f"folder holds no audio files (looked for {', '.join(AUDIO_EXTENSIONS)})")
        if failures is not None:
            failures.extend(bad)
        return files
    if not p.exists():
        target = _dangling_target(p)
        raise AudioError(p, "no such file or folder" if target is None
                         else f"dangling symbolic link (its target {target} does not exist)")
    if p.suffix.lower() in LIST_EXTENSIONS:
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise AudioError(p, f"cannot read the list file ({e.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise AudioError(p, f"line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); a list file holds one "
                             "path per line in UTF-8") from None
        out = []
        # split at \n only (strip() drops a \r): line numbers then match an editor's, and U+2028 may be in a name
        for n, line in enumerate(text.split("\n"), 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if entry.endswith("|"):
                fail(AudioError(p, f"line {n}: {escape_name(entry)}: Kaldi pipe commands are not supported "
                                "(nothing in a list is run); give the audio file's path"))
                continue
            if p.suffix.lower() == ".scp":
                entry = entry.split()[-1]
            q = Path(entry).expanduser()
            if not q.is_absolute():
                q = p.parent / q if (p.parent / q).exists() or (p.parent / q).is_symlink() else Path.cwd() / q
            if not q.is_file():
                target = _dangling_target(q)
                why = ("is a folder, expected an audio file" if q.is_dir() else "not found" if target is None
                       else f"is a dangling symbolic link (to {target})")
                fail(AudioError(p, f"line {n}: {escape_name(entry)} {why} (relative paths are taken from "
                                f"{escape_name(p.parent)})"))
                continue
            out.append(q)
        if not out and not bad:
            raise AudioError(p, "list file holds no paths")
        if failures is not None:
            failures.extend(bad)
        return out
    return [p]
