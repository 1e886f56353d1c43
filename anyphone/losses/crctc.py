"""CTC and consistency-regularised CTC (CR-CTC) losses on log-probabilities.

CR-CTC (Yao et al., 2024) runs the encoder on two differently masked views of each utterance and adds, to the
CTC loss of both, a KL term that pulls each view's frame posteriors towards its partner's (with the partner
detached, so each view is the other's teacher). The views are made in the model (see
`anyphone.models.specaug.SpecAugment.two_views`); this module only needs the stacked log-probs (2N, T, V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lengths_to_padding_mask(lens: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(N,) lengths -> (N, T) bool, True on padding frames."""
    max_len = int(lens.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lens.device).unsqueeze(0) >= lens.unsqueeze(1)


def ctc_loss(
    log_probs: torch.Tensor,
    log_prob_lens: torch.Tensor,
    targets: list[list[int]],
    blank_id: int = 0,
    reduction: str = "sum",
) -> torch.Tensor:
    """CTC loss of padded log-probs (N, T, V) against token id lists; "sum" over utterances by default.

    An empty target is allowed (an utterance of silence or noise must give all-blank output).
    Not zero_infinity: an infeasible utterance gives inf, which the training loop counts and skips.
    """
    device = log_probs.device
    target_lens = torch.tensor([len(t) for t in targets], dtype=torch.int64)
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.int64)
    return F.ctc_loss(
        log_probs.permute(1, 0, 2).float(),  # (T, N, V); float32 even under autocast for a stable recursion
        flat.to(device),
        log_prob_lens.to(device),
        target_lens.to(device),
        blank=blank_id,
        reduction=reduction,
        zero_infinity=False,
    )


def cr_consistency_loss(
    log_probs: torch.Tensor, log_prob_lens: torch.Tensor, row_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over valid frames of KL(partner || self) for stacked views (2N, T, V), partner detached.

    Row i of the first half and row i of the second half are two views of the same utterance.
    row_weights: optional (2N,) weights, e.g. a different scale for unlabelled utterances.
    """
    two_n = log_probs.size(0)
    if two_n % 2:
        raise ValueError(f"CR-CTC needs an even batch of stacked views, got {two_n} rows")
    partner = torch.roll(log_probs.detach(), shifts=two_n // 2, dims=0)
    kl = F.kl_div(log_probs.float(), partner.float(), reduction="none", log_target=True)  # (2N, T, V)
    pad = lengths_to_padding_mask(log_prob_lens, log_probs.size(1)).unsqueeze(-1)
    per_row = kl.masked_fill(pad, 0.0).sum(dim=(1, 2))
    if row_weights is not None:
        per_row = per_row * row_weights.to(per_row)
    return per_row.sum()


def cr_loss_scale_at(batch_idx: int, cr_loss_scale: float, warmup_batches: int) -> float:
    """The CR weight ramps linearly from 0 to `cr_loss_scale` over the first `warmup_batches` batches.

    Early on both views are nearly random, so pulling them together would only slow CTC down.
    """
    if warmup_batches <= 0 or batch_idx >= warmup_batches:
        return cr_loss_scale
    return cr_loss_scale * batch_idx / warmup_batches
