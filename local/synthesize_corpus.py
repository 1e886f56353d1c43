#!/usr/bin/env python3
"""Build the embedded multilingual eSpeak NG corpus as lhotse Shar (FLAC).

Output (``--out-dir``, default ``data/shar/embedded``)::

    train/ dev/ test/      cuts.NNNNNN.jsonl.gz + recording.NNNNNN.tar per shard (CutSet.from_shar(in_dir=...))
    summary.json           languages, utterances, hours, unknown IPA symbols, voices per split
    .state/                per-split settings and per-shard statistics (lets an interrupted run resume)

Each cut: 16 kHz mono, one supervision over the whole cut whose ``text`` is the normalised IPA
(``anyphone.text.ipa.normalize_ipa``: inventory symbols only, no spaces) and whose ``language`` is set.
``cut.custom`` holds ``language``, ``voice`` (eSpeak ``lang+variant``), ``speed`` (words per minute),
``pitch``, ``pitch_range``, ``word_gap``, ``ipa_raw`` (eSpeak's IPA, same synthesis call as the audio),
``text`` (the orthographic sentence), ``speech_start`` and ``speech_end`` (seconds; the rest is the
random leading/trailing silence, 0-0.8 s each, with a faint noise floor).

Splits:
  * train: voice variants of TRAIN_VARIANTS (plus the plain voice), sentences never used in dev/test;
  * dev:   same voice pool as train, unseen sentences (model selection);
  * test:  voice variants held out from training (TEST_VARIANTS) and unseen sentences.
Sentences are planned test -> dev -> train, and a sentence already planned for an earlier split is
redrawn, so test sentences never occur in train (the summary re-checks this on the written cuts).

Reproducibility: every utterance is planned from its own seed (seed, split, language, index) in the main
process; the plan is cut into fixed shards, and each shard is synthesised from a freshly loaded eSpeak
instance with per-utterance noise seeds.  The corpus is therefore the same for the same flags whatever
``--num-workers`` is.

Example::

    python local/synthesize_corpus.py --hours 3 --languages default --num-workers 2
    python local/synthesize_corpus.py --languages all --hours 100 --out-dir data/shar/embedded_all
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_sources import DEFAULT_LANGUAGES, LANGUAGES, TextSource, resolve_languages

from anyphone.data.espeak import (
    TARGET_SAMPLE_RATE,
    EspeakSynthesizer,
    list_variants,
    resample_to_16k,
    reset_engine,
)
from anyphone.fileio import atomic_write_text
from anyphone.text.ipa import has_language_switch, normalize_ipa

SPLITS = ("test", "dev", "train")  # planning order: held-out sentences first
FORMAT_VERSION = 1

# Voice variants never used for train/dev: the test split measures generalisation to unseen voices.
TEST_VARIANTS: tuple[str, ...] = ("m7", "f4", "klatt3", "steph2", "iven2", "edward", "linda", "Michael")
# Variants left out everywhere: whispered, growling or heavily effected voices that are not useful speech.
EXCLUDED_VARIANTS: frozenset[str] = frozenset(
    {"Demonic", "croak", "whisper", "whisperf", "Tweaky", "UniRobot", "anikaRobot", "fast", "AnxiousAndy"}
)

MIN_DURATION = 1.0
MAX_DURATION = 15.0
MAX_SILENCE = 0.8
RATE_RANGE = (130, 240)  # words per minute; eSpeak's normal is 175
PITCH_RANGE = (25, 75)
PITCH_SPAN_RANGE = (20, 90)


def train_variants() -> tuple[str | None, ...]:
    """Variants used for train and dev: every installed variant except the held-out and excluded ones,
    plus None (the language voice's own default)."""
    held = set(TEST_VARIANTS) | EXCLUDED_VARIANTS
    return (None,) + tuple(v for v in list_variants() if v not in held)


# ---------------------------------------------------------------------------------------------------------
# Planning (main process)


@dataclass
class Utterance:
    """Everything needed to synthesise one cut; planned in the main process."""

    cut_id: str
    language: str
    voice: str
    variant: str | None
    text: str
    rate: int
    pitch: int
    pitch_range: int
    word_gap: int
    lead: float
    trail: float
    gain: float
    noise_db: float
    seed: int


def _seed_of(*parts: object) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFF


def _seconds_per_word(code: str, source: TextSource) -> float:
    """Seconds eSpeak takes per word of this language's sentences at 175 wpm (measured, a few ms)."""
    rng = random.Random(_seed_of("calibrate", code))
    syn = EspeakSynthesizer(LANGUAGES[code].voice)
    secs, words = 0.0, 0
    # Seeded, from eSpeak's initial state: the plan's sentence lengths, and so the whole corpus, follow from
    # this figure, and unseeded noise moved it in the fifth digit from one run to the next.
    reset_engine()
    for i in range(4):
        text = source.sentence(rng, 12)
        audio, _ = syn.synthesize_raw(text, seed=_seed_of("calibrate", code, i))
        secs += len(audio) / 22050
        words += len(text.split())
    return max(secs / max(words, 1), 0.05)


def _plan_one(split: str, code: str, idx: int, seed: int, source: TextSource, spw: float,
              variants: tuple[str | None, ...], attempt: int) -> Utterance:
    s = _seed_of(seed, split, code, idx, attempt)
    rng = random.Random(s)
    # Total length skewed towards short cuts (mean about 6.6 s), 1-15 s.
    total = MIN_DURATION + (MAX_DURATION - 0.6 - MIN_DURATION) * rng.random() ** 1.5
    lead = rng.uniform(0.0, MAX_SILENCE)
    trail = rng.uniform(0.0, MAX_SILENCE)
    speech = max(0.4, total - lead - trail)
    rate = rng.randint(*RATE_RANGE)
    word_gap = 0 if rng.random() < 0.7 else rng.randint(1, 4)
    per_word = spw * 175.0 / rate + 0.01 * word_gap
    n_words = max(1, round(speech / per_word))
    variant = variants[rng.randrange(len(variants))]
    voice = LANGUAGES[code].voice
    return Utterance(
        cut_id=f"{split}-{code}-{idx:07d}",
        language=code,
        voice=f"{voice}+{variant}" if variant else voice,
        variant=variant,
        text=source.sentence(rng, n_words),
        rate=rate,
        pitch=rng.randint(*PITCH_RANGE),
        pitch_range=rng.randint(*PITCH_SPAN_RANGE),
        word_gap=word_gap,
        lead=round(lead, 3),
        trail=round(trail, 3),
        gain=round(rng.uniform(0.3, 0.95), 3),
        noise_db=round(rng.uniform(-80.0, -55.0), 1),
        seed=s,
    )


def plan_split(split: str, codes: list[str], seconds: float, seed: int, sources: dict[str, TextSource],
               spw: dict[str, float], taken: set[str]) -> list[Utterance]:
    """Plan utterances for one split: ``seconds`` of speech shared equally by ``codes``; texts in ``taken``
    (sentences of earlier splits) are redrawn.  Returns the plan shuffled (languages interleaved)."""
    variants = TEST_VARIANTS if split == "test" else train_variants()
    per_lang = seconds / max(len(codes), 1)
    plan: list[Utterance] = []
    for code in codes:
        planned, idx = 0.0, 0
        while planned < per_lang or idx == 0:
            for attempt in range(20):
                u = _plan_one(split, code, idx, seed, sources[code], spw[code], variants, attempt)
                if u.text not in taken:
                    break
            plan.append(u)
            n = len(u.text.split())
            planned += u.lead + u.trail + n * (spw[code] * 175.0 / u.rate + 0.01 * u.word_gap)
            idx += 1
    random.Random(_seed_of(seed, split, "order")).shuffle(plan)
    return plan


# ---------------------------------------------------------------------------------------------------------
# Synthesis (worker processes)


def _flac_bytes(samples: np.ndarray, level: float) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, TARGET_SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=level)
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards for identical content
    tar.addfile(info, io.BytesIO(data))


def synthesize_utterance(
    u: Utterance, unknown: collections.Counter | None = None
) -> tuple[np.ndarray, str, str, str, int, int] | None:
    """Synthesise one planned utterance.

    Returns ((S,) int16 audio at 16 kHz with its silences, normalised IPA, raw eSpeak IPA, the text spoken
    (a prefix of the planned one if that ran past 15 s), speech start and end sample), or None when eSpeak
    switched language or gave no phones.  Symbols normalize_ipa had to drop are counted in ``unknown``.
    """
    syn = EspeakSynthesizer(u.voice.split("+")[0], u.variant, u.rate, u.pitch, u.pitch_range, u.word_gap)
    text = u.text
    max_speech = MAX_DURATION - u.lead - u.trail
    for _ in range(4):
        raw22, ipa_raw = syn.synthesize_raw(text, seed=u.seed)
        if len(raw22) / 22050 <= max_speech:
            break
        # Too long for 15 s: keep a prefix of the words (rare; the plan aims at the target length).
        words = text.rstrip(".?!").split()
        text = " ".join(words[: max(1, int(len(words) * 0.7))]) + "."
    else:
        return None
    if not ipa_raw.strip() or has_language_switch(ipa_raw):
        return None
    pre = ipa_raw.replace("ɜ", "3") if u.language == "vi" else ipa_raw  # vi: 'ɜ' is tone 3 (see ipa.py notes)
    norm = normalize_ipa(pre, lang=u.language, unknown=unknown)
    if not norm:
        return None
    speech = resample_to_16k(raw22)
    peak = float(np.max(np.abs(speech))) if speech.size else 0.0
    if peak > 0:
        speech *= u.gain / peak
    lead = round(u.lead * TARGET_SAMPLE_RATE)
    trail = round(u.trail * TARGET_SAMPLE_RATE)
    total = lead + speech.size + trail
    if total < MIN_DURATION * TARGET_SAMPLE_RATE:
        trail += int(MIN_DURATION * TARGET_SAMPLE_RATE) - total
        total = lead + speech.size + trail
    # A faint noise floor everywhere (real recordings never contain digital silence), speech added on top;
    # all in place, in int16 units.
    rng = np.random.default_rng(u.seed)
    out = rng.standard_normal(total, dtype=np.float32)
    out *= np.float32(32767.0 * 10.0 ** (u.noise_db / 20.0))
    seg = out[lead:lead + speech.size]
    seg += speech * np.float32(32767.0)
    np.clip(out, -32768.0, 32767.0, out=out)
    pcm = np.rint(out).astype(np.int16)
    return pcm, norm, ipa_raw, text, lead, lead + speech.size


def _cut_dict(
    u: Utterance, n_samples: int, norm: str, ipa_raw: str, text: str, s0: int, s1: int
) -> tuple[dict, dict]:
    duration = n_samples / TARGET_SAMPLE_RATE
    recording = {
        "id": u.cut_id,
        "sources": [{"type": "shar", "channels": [0], "source": ""}],
        "sampling_rate": TARGET_SAMPLE_RATE,
        "num_samples": n_samples,
        "duration": duration,
        "channel_ids": [0],
    }
    cut = {
        "id": u.cut_id,
        "start": 0.0,
        "duration": duration,
        "channel": 0,
        "supervisions": [{
            "id": u.cut_id,
            "recording_id": u.cut_id,
            "start": 0.0,
            "duration": duration,
            "channel": 0,
            "text": norm,
            "language": u.language,
        }],
        "recording": recording,
        "custom": {
            "language": u.language,
            "voice": u.voice,
            "speed": u.rate,
            "pitch": u.pitch,
            "pitch_range": u.pitch_range,
            "word_gap": u.word_gap,
            "ipa_raw": ipa_raw,
            "text": text,
            "speech_start": round(s0 / TARGET_SAMPLE_RATE, 4),
            "speech_end": round(s1 / TARGET_SAMPLE_RATE, 4),
        },
        "type": "MonoCut",
    }
    return cut, recording


@dataclass
class ShardJob:
    split_dir: str
    state_dir: str
    index: int
    utterances: list[Utterance]
    flac_level: float


def synthesize_shard(job: ShardJob) -> dict:
    """Synthesise one shard into ``cuts.NNNNNN.jsonl.gz`` + ``recording.NNNNNN.tar`` (written under temporary
    names, then renamed) and its statistics JSON; returns the statistics."""
    # Fresh eSpeak state per shard: its output must not depend on which shards this worker did before.
    reset_engine()
    split_dir, state_dir = Path(job.split_dir), Path(job.state_dir)
    name = f"{job.index:06d}"
    tmp_tar = state_dir / f"recording.{name}.tar.part"
    tmp_cuts = state_dir / f"cuts.{name}.jsonl.gz.part"
    stats = {"shard": job.index, "cuts": 0, "seconds": 0.0, "dropped": 0, "per_language": {},
             "unknown": {}, "voices": {}, "texts": []}
    unknown: collections.Counter = collections.Counter()
    per_lang: dict[str, list[float]] = {}
    voices: collections.Counter = collections.Counter()
    # mtime=0 in the gzip and tar headers: identical content gives byte-identical shards.
    with open(tmp_tar, "wb") as ftar, tarfile.open(fileobj=ftar, mode="w|") as tar, \
            open(tmp_cuts, "wb") as fraw, gzip.GzipFile(fileobj=fraw, mode="wb", compresslevel=5, mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8") as fcuts:
        for u in job.utterances:
            res = synthesize_utterance(u, unknown)
            if res is None:
                stats["dropped"] += 1
                continue
            pcm, norm, ipa_raw, text, s0, s1 = res
            cut, recording = _cut_dict(u, pcm.size, norm, ipa_raw, text, s0, s1)
            _tar_add(tar, f"{u.cut_id}.flac", _flac_bytes(pcm, job.flac_level))
            _tar_add(tar, f"{u.cut_id}.json", (json.dumps(recording) + "\n").encode("utf-8"))
            fcuts.write(json.dumps(cut, ensure_ascii=False) + "\n")
            dur = pcm.size / TARGET_SAMPLE_RATE
            stats["cuts"] += 1
            stats["seconds"] += dur
            agg = per_lang.setdefault(u.language, [0, 0.0])
            agg[0] += 1
            agg[1] += dur
            voices[u.variant or "default"] += 1
            stats["texts"].append(text)
    stats["per_language"] = {k: {"cuts": v[0], "seconds": round(v[1], 3)} for k, v in sorted(per_lang.items())}
    stats["unknown"] = dict(unknown.most_common())
    stats["voices"] = dict(sorted(voices.items()))
    stats["seconds"] = round(stats["seconds"], 3)
    os.replace(tmp_tar, split_dir / f"recording.{name}.tar")
    os.replace(tmp_cuts, split_dir / f"cuts.{name}.jsonl.gz")
    atomic_write_text(state_dir / f"shard.{name}.json", json.dumps(stats, ensure_ascii=False))
    return stats


# ---------------------------------------------------------------------------------------------------------
# Driver


def _split_fingerprint(split: str, codes: list[str], seconds: float, seed: int, shard_size: int,
                       flac_level: float) -> str:
    key = json.dumps({"v": FORMAT_VERSION, "split": split, "langs": codes, "seconds": round(seconds, 3),
                      "seed": seed, "shard": shard_size, "flac": flac_level,
                      "test_variants": TEST_VARIANTS, "train_variants": train_variants()}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _shard_done(split_dir: Path, state_dir: Path, k: int) -> bool:
    name = f"{k:06d}"
    return all(p.exists() for p in (split_dir / f"recording.{name}.tar", split_dir / f"cuts.{name}.jsonl.gz",
                                    state_dir / f"shard.{name}.json"))


def _aggregate(shard_stats: list[dict]) -> dict:
    per_lang: dict[str, dict] = {}
    unknown: collections.Counter = collections.Counter()
    voices: collections.Counter = collections.Counter()
    cuts = dropped = 0
    seconds = 0.0
    for st in shard_stats:
        cuts += st["cuts"]
        dropped += st["dropped"]
        seconds += st["seconds"]
        unknown.update(st["unknown"])
        voices.update(st["voices"])
        for k, v in st["per_language"].items():
            a = per_lang.setdefault(k, {"cuts": 0, "seconds": 0.0})
            a["cuts"] += v["cuts"]
            a["seconds"] = round(a["seconds"] + v["seconds"], 3)
    return {"cuts": cuts, "hours": round(seconds / 3600, 4), "dropped": dropped,
            "per_language": dict(sorted(per_lang.items())), "unknown_symbols": dict(unknown.most_common()),
            "voices": dict(sorted(voices.items()))}


def build_corpus(out_dir: str | Path, hours: float = 3.0, languages: str | list[str] = "default",
                 dev_minutes: float = 15.0, test_minutes: float = 20.0, num_workers: int = 1, seed: int = 0,
                 shard_size: int = 200, flac_level: float = 0.0, force: bool = False,
                 progress: bool = True) -> dict:
    """Build (or complete) the corpus in ``out_dir``; returns the summary also written to summary.json.

    Args:
        hours: total train hours (shared equally by the languages); dev/test minutes likewise.
        languages: "default", "all", a comma list, or a list of codes from local/text_sources.py.
        flac_level: FLAC compression level 0..1 (soundfile's scale; 0 is fastest, sizes differ by ~1 %).
    """
    from tqdm import tqdm

    codes = resolve_languages(languages) if isinstance(languages, str) else list(languages)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budgets = {"train": hours * 3600.0, "dev": dev_minutes * 60.0, "test": test_minutes * 60.0}

    t0 = time.time()
    # Decide per split: complete (skip), resumable (same settings), or to (re)build.
    status: dict[str, dict | None] = {}
    for split in SPLITS:
        split_dir = out_dir / split
        state_dir = out_dir / ".state" / split
        fp = _split_fingerprint(split, codes, budgets[split], seed, shard_size, flac_level)
        marker = out_dir / ".state" / f"{split}.json"
        old = json.loads(marker.read_text()) if marker.exists() else None
        if force or (old is not None and old.get("fingerprint") != fp) or (old is None and split_dir.exists()):
            if not force and split_dir.exists() and any(split_dir.iterdir()):
                raise RuntimeError(f"{split_dir}: holds a corpus built with other settings; expected the same "
                                   f"flags, another --out-dir, or --force to rebuild it")
            shutil.rmtree(split_dir, ignore_errors=True)
            shutil.rmtree(state_dir, ignore_errors=True)
            old = None
        status[split] = old

    plans: dict[str, list[Utterance]] = {}
    if not all(st is not None and st.get("complete") for st in status.values()):
        # Plans of later splits depend on the sentences of earlier ones, so plan all splits.
        sources = {c: TextSource(c) for c in codes}
        spw = {c: _seconds_per_word(c, sources[c]) for c in codes}
        taken: set[str] = set()
        for split in SPLITS:
            plans[split] = plan_split(split, codes, budgets[split], seed, sources, spw, taken)
            taken.update(u.text for u in plans[split])
        print(f"planned {sum(len(p) for p in plans.values())} utterances in {len(codes)} languages "
              f"({time.time() - t0:.1f} s)", flush=True)

    summary_splits: dict[str, dict] = {}
    split_texts: dict[str, set[str]] = {}
    for split in SPLITS:
        split_dir = out_dir / split
        state_dir = out_dir / ".state" / split
        marker = out_dir / ".state" / f"{split}.json"
        fp = _split_fingerprint(split, codes, budgets[split], seed, shard_size, flac_level)
        split_dir.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        old = status[split]
        if old is not None and old.get("complete"):
            n_shards = int(old["shards"])
            print(f"{split}: complete in {split_dir} ({n_shards} shards), skipping (--force rebuilds)")
        else:
            plan = plans[split]
            shards = [plan[i:i + shard_size] for i in range(0, len(plan), shard_size)]
            n_shards = len(shards)
            atomic_write_text(marker, json.dumps({"fingerprint": fp, "complete": False, "shards": n_shards}))
            todo = [ShardJob(str(split_dir), str(state_dir), k, s, flac_level)
                    for k, s in enumerate(shards) if not _shard_done(split_dir, state_dir, k)]
            if len(todo) < len(shards):
                print(f"{split}: resuming, {len(shards) - len(todo)} of {len(shards)} shards already done")
            bar = tqdm(total=sum(len(j.utterances) for j in todo), desc=f"{split:5s}", unit="utt",
                       disable=not progress, dynamic_ncols=True)
            if num_workers > 1 and len(todo) > 1:
                ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
                with ctx.Pool(min(num_workers, len(todo))) as pool:
                    for st in pool.imap_unordered(synthesize_shard, todo):
                        bar.update(st["cuts"] + st["dropped"])
            else:
                for job in todo:
                    st = synthesize_shard(job)
                    bar.update(st["cuts"] + st["dropped"])
            bar.close()
            atomic_write_text(marker, json.dumps({"fingerprint": fp, "complete": True, "shards": n_shards}))
        stats = []
        for k in range(n_shards):
            with open(state_dir / f"shard.{k:06d}.json", encoding="utf-8") as f:
                stats.append(json.load(f))
        split_texts[split] = {t for st in stats for t in st["texts"]}
        summary_splits[split] = _aggregate(stats)
        summary_splits[split]["dir"] = str(split_dir)
        summary_splits[split]["shards"] = n_shards

    overlap = len(split_texts["test"] & split_texts["train"])
    summary = {
        "languages": codes,
        "num_languages": len(codes),
        "seed": seed,
        "sample_rate": TARGET_SAMPLE_RATE,
        "test_variants": list(TEST_VARIANTS),
        "train_variants": [v or "default" for v in train_variants()],
        "test_train_sentence_overlap": overlap,
        "splits": {s: summary_splits[s] for s in ("train", "dev", "test")},
        "build_seconds": round(time.time() - t0, 1),
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, ensure_ascii=False, indent=1))
    _print_summary(summary)
    return summary


def _print_summary(summary: dict) -> None:
    print(f"\nlanguages ({summary['num_languages']}): {' '.join(summary['languages'])}")
    print(f"{'split':6s} {'cuts':>7s} {'hours':>8s} {'dropped':>8s}  unknown symbols (top)")
    for split, st in summary["splits"].items():
        unk = ", ".join(f"{k!r}:{v}" for k, v in list(st["unknown_symbols"].items())[:6]) or "none"
        print(f"{split:6s} {st['cuts']:7d} {st['hours']:8.3f} {st['dropped']:8d}  {unk}")
    print(f"test voices (held out from train): {' '.join(summary['test_variants'])}")
    print(f"test sentences also in train: {summary['test_train_sentence_overlap']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="data/shar/embedded", help="output folder (default %(default)s)")
    p.add_argument("--hours", type=float, default=3.0, help="total train hours (default %(default)s)")
    p.add_argument("--languages", default="default",
                   help=f"'default' ({','.join(DEFAULT_LANGUAGES)}), 'all' ({len(LANGUAGES)} languages) "
                        f"or a comma list")
    p.add_argument("--dev-minutes", type=float, default=15.0, help="total dev minutes (default %(default)s)")
    p.add_argument("--test-minutes", type=float, default=20.0, help="total test minutes (default %(default)s)")
    p.add_argument("--num-workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=200, help="cuts per Shar shard (default %(default)s)")
    p.add_argument("--flac-level", type=float, default=0.0,
                   help="FLAC compression level 0..1 (default %(default)s: fastest)")
    p.add_argument("--force", action="store_true", help="rebuild splits that are already complete")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.hours <= 0 or a.dev_minutes <= 0 or a.test_minutes <= 0:
        p.error(f"--hours/--dev-minutes/--test-minutes must be > 0 (got {a.hours}, {a.dev_minutes}, "
                f"{a.test_minutes})")
    build_corpus(a.out_dir, a.hours, a.languages, a.dev_minutes, a.test_minutes, a.num_workers, a.seed,
                 a.shard_size, a.flac_level, a.force, progress=not a.no_progress)


if __name__ == "__main__":
    main()
