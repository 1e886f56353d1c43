"""SpecAugment on fbank batches, as tensors: time warp, frequency masks and time masks.

CR-CTC applies it inside the model: the batch is time-warped once, duplicated, and each copy gets its own
frequency and time masks, so the two views differ only in what was hidden (Yao et al., 2024, "CR-CTC").
All functions take padded features (N, T, F) with lengths (N,) and never touch the padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class SpecAugmentConfig:
    time_warp_factor: int = 80  # largest shift of the warp centre, in frames (lhotse's default)
    num_freq_masks: int = 2
    freq_mask_size: int = 27  # widest frequency mask, in bins
    num_time_masks: int = 10
    time_mask_size: int = 100  # widest time mask, in frames
    max_time_mask_fraction: float = 0.15  # masks of one utterance cover at most this share of it (on average)
    p: float = 0.9  # probability that an utterance is augmented at all

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SpecAugmentConfig:
        return cls(**d)

    @classmethod
    def for_cr_ctc(cls, time_mask_ratio: float = 2.5) -> SpecAugmentConfig:
        """CR-CTC hides more time than plain SpecAugment: masks scaled by --time-mask-ratio (2.5 in the paper)."""
        return cls(
            num_time_masks=int(10 * time_mask_ratio),
            max_time_mask_fraction=0.15 * time_mask_ratio,
        )


def time_warp(x: torch.Tensor, x_lens: torch.Tensor, factor: int, p: float = 0.9,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Stretch the part before a random centre and squeeze the part after it (or the reverse).

    x: (N, T, F); x_lens: (N,). Returns a new tensor of the same shape; padding frames are left as they were.
    Utterances of at most 2 * factor + 2 frames are not warped. generator: a CPU generator for the random
    draws (default: torch's global RNG).
    """
    if factor <= 0:
        return x
    n = x.shape[0]
    lens = x_lens.to(x.device)
    u = _rand((n, 3), x.device, generator)
    apply = (lens > 2 * factor + 2) & (u[:, 0] < p)
    # centre uniform in [factor, length - factor); the shift uniform in [-factor + 1, factor)
    centre = factor + (u[:, 1] * (lens - 2 * factor).clamp(min=1)).long()
    new_centre = centre + (u[:, 2] * (2 * factor - 1)).long() - (factor - 1)
    return warp_frames(x, lens, centre, new_centre, apply)


def warp_frames(x: torch.Tensor, x_lens: torch.Tensor, centre: torch.Tensor, new_centre: torch.Tensor,
                apply: torch.Tensor) -> torch.Tensor:
    """Resample frames [0, centre) of each utterance to [0, new_centre) and [centre, length) to
    [new_centre, length), linearly, as ``F.interpolate(mode="linear", align_corners=False)`` does per
    segment, for the whole batch at once (no per-utterance loop, no device sync).

    x: (N, T, F); x_lens, centre, new_centre: (N,) integers with 0 < new_centre < length; apply: (N,) bool.
    """
    n, t, f = x.shape
    j = torch.arange(t, device=x.device).unsqueeze(0)  # output frame
    c, nc, length = centre.unsqueeze(1), new_centre.unsqueeze(1), x_lens.unsqueeze(1)
    left = j < nc
    in_len = torch.where(left, c, length - c)
    out_len = torch.where(left, nc, length - nc).clamp(min=1)
    dst = torch.where(left, j, j - nc)
    scale = in_len.float() / out_len.float()
    src = (scale * (dst.float() + 0.5) - 0.5).clamp(min=0.0)
    last = (in_len - 1).clamp(min=0)
    i0 = torch.minimum(src.long(), last)
    i1 = torch.minimum(i0 + 1, last)
    weight = (src - i0.float()).unsqueeze(2).to(x.dtype)
    start = torch.where(left, 0, c)
    idx0 = (start + i0).clamp(max=t - 1).unsqueeze(2).expand(n, t, f)
    idx1 = (start + i1).clamp(max=t - 1).unsqueeze(2).expand(n, t, f)
    warped = torch.lerp(torch.gather(x, 1, idx0), torch.gather(x, 1, idx1), weight)
    keep = ((j < length) & apply.unsqueeze(1)).unsqueeze(2)
    return torch.where(keep, warped, x)


def _rand(shape: tuple[int, ...], device, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) draws on `device`; a given (CPU) generator draws on the CPU first."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator).to(device)


def _band_mask(n: int, size_axis: int, num_masks: int, max_width: torch.Tensor, device,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean (n, size_axis) mask that is True inside `num_masks` random bands per row.

    max_width: (n,) widest band per row. Vectorised: draws all bands at once.
    """
    if num_masks <= 0:
        return torch.zeros(n, size_axis, dtype=torch.bool, device=device)
    width = (_rand((n, num_masks), device, generator) * (max_width.unsqueeze(1).float() + 1)).long()
    room = (size_axis - width).clamp(min=1)
    start = (_rand((n, num_masks), device, generator) * room.float()).long()
    pos = torch.arange(size_axis, device=device).view(1, 1, -1)
    inside = (pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))
    return inside.any(dim=1)


def mask_features(x: torch.Tensor, x_lens: torch.Tensor, cfg: SpecAugmentConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent frequency and time masks for every utterance; masked values become the utterance's mean
    (as lhotse's SpecAugment does: a zero would be a loud value in log-mel fbank, around +1.5 std here).

    x: (N, T, F) -> (N, T, F).
    """
    n, t, f = x.shape
    device = x.device
    apply = _rand((n,), device, generator) < cfg.p
    freq_width = torch.full((n,), cfg.freq_mask_size, device=device)
    freq = _band_mask(n, f, cfg.num_freq_masks, freq_width, device, generator)  # (N, F)
    # The time-mask width is bounded per utterance so short utterances are not wiped out.
    per_mask_cap = (x_lens.to(device).float() * cfg.max_time_mask_fraction / max(cfg.num_time_masks, 1)).long()
    time_width = per_mask_cap.clamp(max=cfg.time_mask_size)
    tmask = _band_mask(n, t, cfg.num_time_masks, time_width, device, generator)  # (N, T)
    valid = torch.arange(t, device=device).unsqueeze(0) < x_lens.to(device).unsqueeze(1)  # (N, T)
    mask = (freq.unsqueeze(1) | tmask.unsqueeze(2)) & apply.view(n, 1, 1) & valid.unsqueeze(2)
    valid = valid.to(x.dtype)
    mean = (x * valid.unsqueeze(2)).sum(dim=(1, 2)) / (valid.sum(dim=1) * f).clamp(min=1)
    return torch.where(mask, mean.view(n, 1, 1).to(x.dtype), x)


class SpecAugment(torch.nn.Module):
    """Time warp plus masks; `forward(x, x_lens)` -> augmented x, (N, T, F).

    seed: draw from a private generator (the data pipeline reseeds it per batch) instead of torch's global RNG
    (the training step's, which the training loop seeds before every step, so a resumed run draws the same).
    """

    def __init__(self, cfg: SpecAugmentConfig | None = None, seed: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SpecAugmentConfig()
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> torch.Tensor:
        x = time_warp(x, x_lens, self.cfg.time_warp_factor, self.cfg.p, self.generator)
        return mask_features(x, x_lens, self.cfg, self.generator)

    def two_views(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CR-CTC's pair: one shared warp, then independent masks. Returns (2N, T, F) and lengths (2N,)."""
        x = time_warp(x, x_lens, self.cfg.time_warp_factor, self.cfg.p, self.generator)
        both = x.repeat(2, 1, 1)
        both_lens = x_lens.repeat(2)
        return mask_features(both, both_lens, self.cfg, self.generator), both_lens
