"""What ``anyphone align`` aligns: audio files paired with transcripts, from the three input layouts.

* one audio file, with the transcript given on the command line (``--phones`` IPA or ``--text`` with
  ``--lang``) or in a file beside it with the same stem (``x.wav`` + ``x.txt`` or ``x.lab``);
* a folder of audio files, each with its ``.txt``/``.lab`` transcript beside it (Montreal Forced Aligner's
  layout); audio without a transcript is reported;
* a Kaldi/Allosaurus data folder: ``wave`` (or ``wav.scp``) with ``utt_id path`` lines and ``text`` with
  ``utt_id transcript`` lines (relative paths are relative to the folder). Lines that are commands
  (``... |``) are refused: nothing in a data file is ever executed.

A transcript is IPA, or orthographic text when ``--lang`` is given (eSpeak NG turns it into phones).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AUDIO_SUFFIXES", "AlignJob", "JobError", "find_jobs"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".sph")
TRANSCRIPT_SUFFIXES = (".txt", ".lab")


class JobError(ValueError):
    """An input layout that cannot be used (one line naming the file)."""


@dataclass
class AlignJob:
    """One recording to align: ``name`` (for outputs), ``audio`` path, ``transcript`` text, and ``where`` it came
    from (for messages); ``problem`` is set instead of ``transcript`` when the job cannot run."""

    name: str
    audio: Path
    transcript: str | None
    where: str
    problem: str | None = None


def _read_transcript(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise JobError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _table(path: Path) -> tuple[dict[str, str], list[str]]:
    """``key rest-of-line`` lines -> dict (keeps file order); problems as one-line messages."""
    out: dict[str, str] = {}
    problems: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise JobError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().split(maxsplit=1)
        if parts[0] in out:
            problems.append(f"{path}:{n}: utterance {parts[0]!r} appears twice; the first line is used")
            continue
        out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out, problems


def _kaldi_jobs(folder: Path) -> list[AlignJob]:
    wave = next((folder / n for n in ("wave", "wav.scp") if (folder / n).is_file()), None)
    text = folder / "text"
    if wave is None or not text.is_file():
        raise JobError(f"{folder}: a Kaldi-style folder needs 'wave' (or 'wav.scp') and 'text'")
    waves, problems = _table(wave)
    texts, more = _table(text)
    jobs = [AlignJob(p.split(":", 1)[0], folder, None, p, problem=p) for p in problems + more]
    for utt, spec in waves.items():
        where = f"{wave}: {utt}"
        if spec.rstrip().endswith("|") or spec.lstrip().startswith("|"):
            jobs.append(AlignJob(utt, folder, None, where, problem=f"{where}: a command ('{spec[:40]}'); commands "
                                 "in data files are never run, give an audio path"))
            continue
        audio = Path(spec.strip())
        audio = audio if audio.is_absolute() else folder / audio
        if utt not in texts:
            jobs.append(AlignJob(utt, audio, None, where, problem=f"{text}: no line for utterance {utt!r}"))
            continue
        jobs.append(AlignJob(utt, audio, texts[utt], where))
    for utt in texts.keys() - waves.keys():
        jobs.append(AlignJob(utt, folder, None, str(text), problem=f"{wave}: no audio for utterance {utt!r}"))
    return jobs


def _sibling_transcript(audio: Path) -> Path | None:
    for suffix in TRANSCRIPT_SUFFIXES:
        cand = audio.with_suffix(suffix)
        if cand.is_file():
            return cand
    return None


def find_jobs(inputs: list[str | os.PathLike], transcript: str | None = None) -> list[AlignJob]:
    """Jobs for ``-i`` inputs (see the module docstring); ``transcript`` is the command-line one (a single
    audio file only). Jobs are in input order, a folder's sorted by name.

    Raises:
        JobError: an input that does not exist, or a command-line transcript with several recordings.
    """
    jobs: list[AlignJob] = []
    for spec in inputs:
        path = Path(spec).expanduser()
        if path.is_dir():
            if (path / "text").is_file() and ((path / "wave").is_file() or (path / "wav.scp").is_file()):
                jobs.extend(_kaldi_jobs(path))
                continue
            audios = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not audios:
                raise JobError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) and no Kaldi 'wave'+'text'")
            for a in audios:
                name = a.relative_to(path).with_suffix("").as_posix()
                t = _sibling_transcript(a)
                if t is None:
                    jobs.append(AlignJob(name, a, None, str(a), problem=f"{a}: no transcript beside it "
                                         f"({a.stem}.txt or {a.stem}.lab)"))
                else:
                    jobs.append(AlignJob(name, a, _read_transcript(t), str(t)))
        elif path.is_file():
            if transcript is not None:
                jobs.append(AlignJob(path.stem, path, transcript, str(path)))
                continue
            t = _sibling_transcript(path)
            if t is None:
                jobs.append(AlignJob(path.stem, path, None, str(path), problem=f"{path}: no transcript; give "
                                     f"--phones or --text, or put {path.stem}.txt beside it"))
            else:
                jobs.append(AlignJob(path.stem, path, _read_transcript(t), str(t)))
        else:
            raise JobError(f"{path}: no such file or folder")
    if transcript is not None and len(jobs) != 1:
        raise JobError(f"--phones/--text give one transcript but the input has {len(jobs)} recordings; put each "
                       "transcript beside its audio (x.wav + x.txt) or use a Kaldi folder (wave + text)")
    return jobs
