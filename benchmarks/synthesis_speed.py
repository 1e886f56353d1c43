#!/usr/bin/env python3
"""Embedded-corpus synthesis speed: seconds of audio produced per CPU-second on one core.

Plans utterances exactly as ``local/synthesize_corpus.py`` does, then runs the worker's shard function in
this process (one core): eSpeak synthesis, 22.05 -> 16 kHz resampling, silences and noise floor, IPA
normalisation, FLAC encoding and writing the Shar tar/jsonl.gz files.  Planning (loading word lists) is
a one-off cost and is timed separately.

    python benchmarks/synthesis_speed.py                  # default languages, ~10 min of audio
    python benchmarks/synthesis_speed.py --minutes 3 --languages en,hi --breakdown
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local"))

import synthesize_corpus as sc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="audio to synthesise (default %(default)s)")
    p.add_argument("--languages", default="default")
    p.add_argument("--flac-level", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--breakdown", action="store_true", help="also time eSpeak, resampling and FLAC alone")
    a = p.parse_args()

    codes = sc.resolve_languages(a.languages)
    t0 = time.process_time()
    sources = {c: sc.TextSource(c) for c in codes}
    spw = {c: sc._seconds_per_word(c, sources[c]) for c in codes}
    plan = sc.plan_split("train", codes, a.minutes * 60.0, a.seed, sources, spw, set())
    t_plan = time.process_time() - t0

    with tempfile.TemporaryDirectory() as tmp:
        split_dir, state_dir = Path(tmp) / "train", Path(tmp) / "state"
        split_dir.mkdir()
        state_dir.mkdir()
        # Warm-up outside the timed region: module imports (scipy.signal, soundfile) happen once per worker.
        sc.synthesize_shard(sc.ShardJob(str(split_dir), str(state_dir), 1, plan[:2], a.flac_level))
        job = sc.ShardJob(str(split_dir), str(state_dir), 0, plan, a.flac_level)
        t1 = time.process_time()
        stats = sc.synthesize_shard(job)
        cpu = time.process_time() - t1
        size = sum(f.stat().st_size for f in split_dir.glob("*.000000.*"))

    audio = stats["seconds"]
    print(f"languages: {','.join(codes)}; {stats['cuts']} utterances ({stats['dropped']} dropped), "
          f"{audio / 60:.1f} min of 16 kHz audio, FLAC level {a.flac_level}, {size / 2**20:.1f} MiB")
    print(f"planning (word lists, calibration): {t_plan:.1f} CPU-s, once per run")
    print(f"synthesis + resampling + FLAC + Shar writing: {cpu:.2f} CPU-s on one core")
    print(f"speed: {audio / cpu:.0f} s of audio per CPU-second (one core)")

    if a.breakdown:
        sc.reset_engine()
        t_es = t_rs = t_fl = 0.0
        for u in plan[:200]:
            syn = sc.EspeakSynthesizer(u.voice.split("+")[0], u.variant, u.rate, u.pitch, u.pitch_range, u.word_gap)
            t = time.process_time()
            raw, _ = syn.synthesize_raw(u.text, seed=u.seed)
            t_es += time.process_time() - t
            t = time.process_time()
            y = sc.resample_to_16k(raw)
            t_rs += time.process_time() - t
            t = time.process_time()
            sc._flac_bytes(np.clip(y * 32767, -32768, 32767).astype(np.int16), a.flac_level)
            t_fl += time.process_time() - t
        n = min(len(plan), 200)
        print(f"breakdown over {n} utterances (CPU-s): eSpeak {t_es:.2f}, resample {t_rs:.2f}, FLAC {t_fl:.2f}")


if __name__ == "__main__":
    main()
