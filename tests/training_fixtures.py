"""What the training tests share: a ~1M-parameter Zipformer, flags without data-side randomness, and a tiny
learnable corpus (each text has its own tone) written as Shar."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anyphone.data.shar import make_cut, write_shar

REPO = Path(__file__).resolve().parents[1]
# the reference fixtures made with ZIPA's own code (../shared beside the repository; tests skip without them)
ZIPA_REF = REPO.parent / "shared" / "reference" / "zipa"
TEXTS = ["aba", "kʰæt", "ʃiː", "mama", "goʊ", "tʃɛk", "nɪŋ", "pɑt"]

# A model of about 1M parameters (the ZIPA fixture's shape), so a step takes a fraction of a second.
SMALL_MODEL = [
    "--model-size", "tiny", "--num-encoder-layers", "1,1,1,1,1,1",
    "--encoder-dim", "48,64,64,96,64,48", "--feedforward-dim", "96,128,128,192,128,96",
    "--num-heads", "2,4,4,4,4,2", "--query-head-dim", "8", "--value-head-dim", "4", "--pos-head-dim", "2",
    "--pos-dim", "16", "--encoder-unmasked-dim", "32,48,48,64,48,32",
]
# No data-side randomness: tests that compare runs with different flags or processes see the same features.
NO_AUG = [
    "--speed-perturb", "0", "--noise-prob", "0", "--volume-perturb-prob", "0", "--silence-pad-prob", "0",
    "--empty-prob", "0", "--num-workers", "0", "--num-buckets", "2", "--min-duration", "0",
]


def tone_cuts(n: int = 24, durations: tuple[float, float] = (0.8, 1.4), noise: float = 0.003) -> list:
    """``n`` cuts ``utt000..``: text i % 8 of TEXTS, a tone whose pitch depends on the text, plus a little
    noise; durations drawn uniformly from ``durations`` with a fixed seed."""
    rng = np.random.default_rng(0)
    cuts = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)]
        dur = float(rng.uniform(*durations))
        t = np.arange(int(dur * 16000)) / 16000
        f0 = 120 + 40 * (i % len(TEXTS))
        wave = 0.3 * np.sin(2 * np.pi * f0 * t) * np.sin(np.pi * t / dur)
        if noise:
            wave = wave + noise * rng.standard_normal(len(t))
        cuts.append(make_cut(f"utt{i:03d}", wave.astype(np.float32), text, "eng"))
    return cuts


def write_tone_corpus(root: Path, shard_size: int = 8, dev: int = 0, **kwargs) -> Path:
    """``root/train`` (and ``root/dev`` with the first ``dev`` cuts) as Shar; returns ``root``."""
    cuts = tone_cuts(**kwargs)
    write_shar(cuts, root / "train", shard_size=shard_size)
    if dev:
        write_shar(cuts[:dev], root / "dev", shard_size=shard_size)
    return root
