"""Training augmentations, applied inside dataloader workers.

Three stages, in the order the dataset applies them:

1. cut transforms (``CutSet -> CutSet``, before audio is loaded): :class:`SpeedPerturb`
   (lhotse ``cut.perturb_speed``), :class:`VolumePerturb` (``cut.perturb_volume``);
2. audio batch transforms on the loaded waves (list of (S,) float32 at 16 kHz):
   :class:`SilenceAugment` (silence padding and silence/noise-only items with an empty
   transcript, so the model learns to emit nothing there) and :class:`NoiseAugment` (additive
   coloured noise, mains hum, babble from the other items of the batch, or noise files, at a
   random SNR);
3. feature batch transforms on (N, T, F) fbank: :class:`SpecAugment` (time warp, frequency and
   time masks). Off by default because the CR-CTC model applies its own SpecAugment.

Every random choice uses a ``random.Random``/``numpy``/``torch`` generator owned by the transform. The data
module reseeds them before each training batch from (seed, rank, epoch, batch index), so a batch is the same
whichever worker makes it and after any resume (see ``anyphone.data.module``).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet

from anyphone.data.fbank import SAMPLE_RATE
from anyphone.models.specaug import SpecAugment as _ModelSpecAugment
from anyphone.models.specaug import SpecAugmentConfig

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")


def _worker_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# 1. Cut transforms
# ----------------------------------------------------------------------------------------------


class SpeedPerturb:
    """Change the speed (and pitch) of each cut by a factor drawn from ``factors``.

    The cut's duration and id change (lhotse appends ``_sp{factor}``); supervisions are scaled.
    """

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1), seed: int | None = None) -> None:
        self.factors = [float(f) for f in factors]
        self.rng = random.Random(seed)

    def __call__(self, cuts: CutSet) -> CutSet:
        out = []
        for cut in cuts:
            f = self.rng.choice(self.factors)
            out.append(cut if f == 1.0 else cut.perturb_speed(f, affix_id=True))
        return CutSet.from_cuts(out)


class VolumePerturb:
    """With probability ``p`` scale a cut's amplitude by a log-uniform factor in [low, high]."""

    def __init__(self, low: float = 0.125, high: float = 2.0, p: float = 0.5, seed: int | None = None) -> None:
        if not 0 < low <= high:
            raise ValueError(f"VolumePerturb: need 0 < low <= high, got low={low} high={high}")
        self.low, self.high, self.p = low, high, p
        self.rng = random.Random(seed)

    def __call__(self, cuts: CutSet) -> CutSet:
        out = []
        for cut in cuts:
            if self.rng.random() < self.p:
                f = math.exp(self.rng.uniform(math.log(self.low), math.log(self.high)))
                cut = cut.perturb_volume(f, affix_id=False)
            out.append(cut)
        return CutSet.from_cuts(out)


# ----------------------------------------------------------------------------------------------
# 2. Audio batch transforms
# ----------------------------------------------------------------------------------------------


def coloured_noise(num_samples: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power spectrum falls as 1/f^a: white a=0, pink a=1, brown a=2."""
    alpha = {"white": 0.0, "pink": 1.0, "brown": 2.0}[colour]
    white = rng.standard_normal(num_samples)
    if alpha == 0.0 or num_samples < 4:
        x = white
    else:
        spec = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(num_samples, d=1.0 / SAMPLE_RATE)
        freqs[0] = freqs[1]  # avoid dividing by zero at DC
        spec = spec / freqs ** (alpha / 2.0)
        x = np.fft.irfft(spec, n=num_samples)
        x = x - x.mean()
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def hum_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS mains hum: 50 or 60 Hz with a few decaying harmonics and a little jitter."""
    base = rng.choice([50.0, 60.0]) * rng.uniform(0.99, 1.01)
    t = np.arange(num_samples) / SAMPLE_RATE
    x = np.zeros(num_samples)
    for k in range(1, int(rng.integers(2, 7))):
        x += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi))
    x += 0.05 * rng.standard_normal(num_samples)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def _fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Tile or crop ``x`` (random offset) to exactly ``n`` samples."""
    if len(x) == 0:
        return np.zeros(n, dtype=np.float32)
    if len(x) < n:
        x = np.tile(x, math.ceil(n / len(x)) + 1)
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start : start + n]


def babble_noise(
    num_samples: int, others: Sequence[np.ndarray], rng: np.random.Generator, max_talkers: int = 6
) -> np.ndarray | None:
    """Unit-RMS babble: a sum of 2..max_talkers other waves of the batch; None if too few."""
    pool = [w for w in others if len(w) > 0 and np.any(w)]
    if len(pool) < 2:
        return None
    k = int(rng.integers(2, min(max_talkers, len(pool)) + 1))
    idx = rng.choice(len(pool), size=k, replace=False)
    x = np.zeros(num_samples)
    for i in idx:
        w = _fit_length(pool[i], num_samples, rng)
        x += w / (np.sqrt(np.mean(w**2)) + 1e-12)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


class NoiseBank:
    """Noise recordings from a directory of audio files or from a Shar directory.

    Loaded lazily (in the worker that first needs them); at most ``max_items`` recordings are
    kept in memory, resampled to 16 kHz mono.
    """

    def __init__(self, noise_dir: str | Path, max_items: int = 500) -> None:
        self.noise_dir = Path(noise_dir)
        if not self.noise_dir.is_dir():
            raise FileNotFoundError(f"noise directory {self.noise_dir} does not exist")
        self.max_items = max_items
        self._items: list[np.ndarray] | None = None

    def _load(self) -> list[np.ndarray]:
        from anyphone.data.shar import _AudioProblem, _to_mono_16k, read_audio_file

        items: list[np.ndarray] = []
        if any(self.noise_dir.glob("cuts.*.jsonl.gz")):
            from anyphone.data.shar import open_shar

            for cut in open_shar(self.noise_dir):
                if len(items) >= self.max_items:
                    break
                items.append(_to_mono_16k(cut.load_audio().T, cut.sampling_rate))
        else:
            files = sorted(p for p in self.noise_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
            for p in files[: self.max_items]:
                try:
                    items.append(read_audio_file(p))
                except _AudioProblem as e:
                    log.warning(f"noise file {p}: {e.kind} ({e.detail}); ignored")
        items = [x for x in items if len(x) > 0 and np.any(x)]
        if not items:
            raise FileNotFoundError(f"noise directory {self.noise_dir} has no usable audio (wav/flac or Shar)")
        return items

    def sample(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A unit-RMS noise segment of ``num_samples`` samples."""
        if self._items is None:
            self._items = self._load()
        x = _fit_length(self._items[int(rng.integers(len(self._items)))], num_samples, rng)
        return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """signal + noise scaled to ``snr_db``. For a (near) silent signal the noise gets an absolute
    level between -60 and -25 dBFS instead. The result is rescaled if it would clip."""
    p_sig = float(np.mean(signal.astype(np.float64) ** 2)) if len(signal) else 0.0
    p_noise = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-20
    if p_sig < 1e-10:
        target_rms = 10 ** (rng.uniform(-60, -25) / 20)
        scale = target_rms / math.sqrt(p_noise)
    else:
        scale = math.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))
    out = signal + scale * noise
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    if peak > 0.999:
        out = out * (0.999 / peak)
    return out.astype(np.float32)


class NoiseAugment:
    """With probability ``p`` add noise to each wave at an SNR drawn uniformly from ``snr_range``.

    The noise kind is drawn by ``kind_weights`` from white/pink/brown/hum/babble (/file when a
    ``noise_dir`` is given). Babble is made of the other waves of the same batch.
    """

    def __init__(
        self,
        p: float = 0.5,
        snr_range: tuple[float, float] = (0.0, 30.0),
        noise_dir: str | Path | None = None,
        kind_weights: dict[str, float] | None = None,
        seed: int | None = None,
    ) -> None:
        self.p = p
        self.snr_range = (float(min(snr_range)), float(max(snr_range)))
        self.bank = NoiseBank(noise_dir) if noise_dir else None
        weights = {"white": 1.0, "pink": 2.0, "brown": 1.0, "hum": 0.5, "babble": 1.5}
        if self.bank is not None:
            weights["file"] = 3.0
        weights.update(kind_weights or {})
        self.kinds = [k for k, w in weights.items() if w > 0]
        self.weights = np.array([weights[k] for k in self.kinds], dtype=np.float64)
        self.weights /= self.weights.sum()
        self.rng = _worker_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = _worker_rng(seed)

    def make_noise(self, kind: str, n: int, others: Sequence[np.ndarray]) -> np.ndarray:
        """Unit-RMS noise of kind ``kind`` with ``n`` samples (babble falls back to pink)."""
        if kind in ("white", "pink", "brown"):
            return coloured_noise(n, kind, self.rng)
        if kind == "hum":
            return hum_noise(n, self.rng)
        if kind == "file" and self.bank is not None:
            return self.bank.sample(n, self.rng)
        if kind == "babble":
            b = babble_noise(n, others, self.rng)
            if b is not None:
                return b
        return coloured_noise(n, "pink", self.rng)

    def __call__(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i, w in enumerate(waves):
            if len(w) == 0 or self.rng.random() >= self.p:
                out.append(w)
                continue
            kind = str(self.rng.choice(self.kinds, p=self.weights))
            noise = self.make_noise(kind, len(w), waves[:i] + waves[i + 1 :])
            snr = float(self.rng.uniform(*self.snr_range))
            out.append(mix_at_snr(w, noise, snr, self.rng))
        return out


class SilenceAugment:
    """Teach the model that silence and noise carry no phones.

    * with probability ``pad_prob`` a wave gets 0..``max_pad`` s of silence at its start and end
      (the transcript is unchanged);
    * with probability ``empty_prob`` a wave is replaced by silence of the same length with a
      low-level noise floor, or by pure noise, and its transcript becomes empty.

    Returns the new waves and a list of flags: True where the transcript must be emptied.
    Run it before :class:`NoiseAugment` so that padded silence also receives noise.
    """

    def __init__(
        self,
        pad_prob: float = 0.2,
        max_pad: float = 0.5,
        empty_prob: float = 0.02,
        seed: int | None = None,
    ) -> None:
        self.pad_prob, self.max_pad, self.empty_prob = pad_prob, max_pad, empty_prob
        self.rng = _worker_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = _worker_rng(seed)

    def __call__(self, waves: list[np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
        out, emptied = [], []
        for w in waves:
            if len(w) > 0 and self.rng.random() < self.empty_prob:
                n = len(w)
                if self.rng.random() < 0.5:
                    level = 10 ** (self.rng.uniform(-70, -45) / 20)  # near-silence (mic self-noise)
                else:
                    level = 10 ** (self.rng.uniform(-40, -15) / 20)  # noise only
                kind = str(self.rng.choice(["white", "pink", "brown"]))
                out.append(level * coloured_noise(n, kind, self.rng))
                emptied.append(True)
                continue
            if self.rng.random() < self.pad_prob:
                max_n = int(self.max_pad * SAMPLE_RATE)
                left, right = (int(v) for v in self.rng.integers(0, max_n + 1, size=2))
                w = np.concatenate([np.zeros(left, np.float32), w, np.zeros(right, np.float32)])
            out.append(w)
            emptied.append(False)
        return out, emptied


# ----------------------------------------------------------------------------------------------
# 3. Feature batch transforms
# ----------------------------------------------------------------------------------------------


class SpecAugment(_ModelSpecAugment):
    """SpecAugment in the data pipeline: the model-side one CR-CTC uses (`anyphone.models.specaug`), with a
    private seeded generator so that worker reseeding keeps batches reproducible.

    masks: other SpecAugmentConfig fields (num_freq_masks, freq_mask_size, num_time_masks, time_mask_size,
    max_time_mask_fraction). Call it as ``aug(feats (N, T, F), feat_lens (N,))``; padding stays untouched.
    """

    def __init__(self, time_warp: int = 80, p: float = 0.9, seed: int | None = None, **masks) -> None:
        super().__init__(SpecAugmentConfig(time_warp_factor=time_warp, p=p, **masks), seed=seed or 0)

    def __call__(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(feats, feat_lens)
