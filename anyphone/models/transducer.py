"""Pruned-transducer model (Zipformer encoder, stateless decoder, joiner) with ZIPA's state_dict layout.

Keys: ``encoder_embed.*``, ``encoder.*`` (Zipformer2 with output downsampling 2, i.e. 25 Hz),
``decoder.embedding.weight``, ``decoder.conv.weight``, ``joiner.{encoder_proj,decoder_proj,
output_linear}.*``, ``simple_am_proj.*``, ``simple_lm_proj.*`` and, with ``use_ctc``, an extra
``ctc_output.1.*`` head.  Training uses the pruned RNN-T loss of :mod:`anyphone.losses.rnnt`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ctc import build_encoder, forward_encoder
from .presets import ZipformerConfig
from .scaling import Balancer, scaled_linear

__all__ = ["Decoder", "Joiner", "TransducerModel", "pad_token_ids", "transducer_loss_scales"]

_FILE = "anyphone/models/transducer.py"


class Decoder(nn.Module):
    """Stateless prediction network: the embeddings of the last ``context_size`` tokens mixed by a
    grouped Conv1d (group size 4, no bias) and a ReLU.  A negative id means "no token" (zero
    embedding), used for the left context at the start of decoding."""

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int = 0, context_size: int = 2) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"{_FILE}: context_size={context_size}, expected >= 1")
        if context_size > 1 and decoder_dim % 4 != 0:
            raise ValueError(f"{_FILE}: decoder_dim={decoder_dim}, expected a multiple of 4 (conv group size)")
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        # Balancers keep the embedding/conv output magnitudes from drifting (gradient-only, identity forward).
        self.balancer = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0, max_positive=1.0,
                                 min_abs=0.5, max_abs=1.0, prob=0.05)
        if context_size > 1:
            self.conv = nn.Conv1d(decoder_dim, decoder_dim, kernel_size=context_size, padding=0,
                                  groups=decoder_dim // 4, bias=False)
            self.balancer2 = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0, max_positive=1.0,
                                      min_abs=0.5, max_abs=1.0, prob=0.05)
        else:
            self.conv = nn.Identity()

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """y: (N, U) token ids (negative = no token).

        need_pad=True (training): left-pad with context_size-1 "no token" frames, output (N, U, D).
        need_pad=False (decoding): y holds exactly context_size ids, output (N, 1, D).
        """
        y = y.to(torch.int64)
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)
        emb = self.balancer(emb)
        if self.context_size == 1:
            return emb
        emb = emb.permute(0, 2, 1)  # (N, D, U)
        if need_pad:
            emb = F.pad(emb, (self.context_size - 1, 0))
        elif emb.shape[-1] != self.context_size:
            raise ValueError(
                f"{_FILE}: decoder input has {emb.shape[-1]} tokens with need_pad=False, "
                f"expected context_size={self.context_size}"
            )
        out = F.relu(self.conv(emb).permute(0, 2, 1))
        return self.balancer2(out)


class Joiner(nn.Module):
    """logits = output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.encoder_proj = scaled_linear(encoder_dim, joiner_dim, initial_scale=0.25)
        self.decoder_proj = scaled_linear(decoder_dim, joiner_dim, initial_scale=0.25)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: Tensor, decoder_out: Tensor, project_input: bool = True) -> Tensor:
        """encoder_out (..., C_enc) and decoder_out (..., C_dec), same ndim and broadcastable,
        e.g. (N, T, s_range, C) each -> logits (N, T, s_range, V).  With ``project_input=False`` the
        inputs are already projected to joiner_dim."""
        if encoder_out.ndim != decoder_out.ndim:
            raise ValueError(
                f"{_FILE}: joiner inputs {tuple(encoder_out.shape)} and {tuple(decoder_out.shape)} "
                "must have the same number of dims"
            )
        if project_input:
            hidden = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            hidden = encoder_out + decoder_out
        return self.output_linear(torch.tanh(hidden))


def pad_token_ids(token_ids: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu",
                  prepend: int | None = None) -> tuple[Tensor, Tensor]:
    """list of N id lists -> (padded (N, U_max [+1]) int64, lengths (N,) int64, without the prepend)."""
    lens = torch.tensor([len(t) for t in token_ids], dtype=torch.int64)
    extra = 0 if prepend is None else 1
    width = (int(lens.max()) if len(token_ids) else 0) + extra
    out = torch.full((len(token_ids), width), pad, dtype=torch.int64)
    if prepend is not None:
        out[:, 0] = prepend
    for i, t in enumerate(token_ids):
        if len(t):
            out[i, extra:extra + len(t)] = torch.as_tensor(list(t), dtype=torch.int64)
    return out.to(device), lens.to(device)


class TransducerModel(nn.Module):
    """Zipformer pruned transducer (ZIPA's AsrModel with ``use_transducer=True``), loadable from ZIPA
    transducer checkpoints with ``strict=True`` (``use_ctc=False``).

    Args:
      cfg: encoder and head sizes (decoder_dim, joiner_dim, context_size, vocab_size).
      vocab_size: overrides ``cfg.vocab_size``.
      blank_id: blank / start-of-sequence id (0).
      use_ctc: add a joint CTC head ``ctc_output`` on the encoder output.
      rnnt_backend: "torch" (default, pure PyTorch), "k2", "fast_rnnt" or "auto"; see
        :func:`anyphone.losses.rnnt.get_rnnt_backend`.
    """

    def __init__(self, cfg: ZipformerConfig, vocab_size: int | None = None, blank_id: int = 0,
                 use_ctc: bool = False, ctc_dropout: float = 0.1, rnnt_backend: str = "torch") -> None:
        super().__init__()
        self.cfg = cfg
        vocab_size = vocab_size or cfg.vocab_size
        enc_dim = cfg.output_dim
        self.encoder_embed, self.encoder = build_encoder(cfg, output_downsampling_factor=2)
        self.decoder = Decoder(vocab_size, cfg.decoder_dim, blank_id, cfg.context_size)
        self.joiner = Joiner(enc_dim, cfg.decoder_dim, cfg.joiner_dim, vocab_size)
        self.simple_am_proj = scaled_linear(enc_dim, vocab_size, initial_scale=0.25)
        self.simple_lm_proj = scaled_linear(cfg.decoder_dim, vocab_size, initial_scale=0.25)
        self.use_ctc = use_ctc
        if use_ctc:
            self.ctc_output = nn.Sequential(nn.Dropout(p=ctc_dropout), nn.Linear(enc_dim, vocab_size),
                                            nn.LogSoftmax(dim=-1))
        self.rnnt_backend = rnnt_backend
        self._backends: dict[str, object] = {}

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def blank_id(self) -> int:
        return self.decoder.blank_id

    def forward_encoder(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, T, 80) zero-padded fbank with T == max(x_lens); x_lens: (N,).

        Returns encoder_out (N, ((T-7)//2+1)//2, C) at 25 Hz and encoder_out_lens (N,).
        """
        return forward_encoder(self.encoder_embed, self.encoder, x, x_lens)

    def _loss_backend(self, device: torch.device):
        from anyphone.losses.rnnt import get_rnnt_backend

        key = device.type
        if key not in self._backends:
            self._backends[key] = get_rnnt_backend(self.rnnt_backend, device)
        return self._backends[key]

    def forward_transducer(self, encoder_out: Tensor, encoder_out_lens: Tensor,
                           token_ids: Sequence[Sequence[int]], prune_range: int = 5,
                           am_scale: float = 0.0, lm_scale: float = 0.0) -> tuple[Tensor, Tensor]:
        """Simple (smoothed) and pruned RNN-T losses, each summed over the batch.

        encoder_out (N, T, C), encoder_out_lens (N,), token_ids: N lists of ids (no blank).
        """
        n = encoder_out.shape[0]
        if len(token_ids) != n:
            raise ValueError(f"{_FILE}: {len(token_ids)} token sequences for a batch of {n}")
        device = encoder_out.device
        blank = self.blank_id
        y_padded, y_lens = pad_token_ids(token_ids, pad=0, device=device)
        sos_y, _ = pad_token_ids(token_ids, pad=blank, device=device, prepend=blank)
        decoder_out = self.decoder(sos_y)  # (N, S+1, decoder_dim)
        boundary = torch.zeros(n, 4, dtype=torch.int64, device=device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = encoder_out_lens
        k = self._loss_backend(device)
        lm = self.simple_lm_proj(decoder_out)
        am = self.simple_am_proj(encoder_out)
        with torch.autocast(device_type=device.type, enabled=False):
            simple_loss, (px_grad, py_grad) = k.rnnt_loss_smoothed(
                lm=lm.float(), am=am.float(), symbols=y_padded, termination_symbol=blank,
                lm_only_scale=lm_scale, am_only_scale=am_scale, boundary=boundary, reduction="sum",
                return_grad=True,
            )
        ranges = k.get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad, boundary=boundary,
                                         s_range=prune_range)
        # project before pruning: (N, T, C) and (N, S+1, C) are much smaller than (N, T, R, C)
        am_pruned, lm_pruned = k.do_rnnt_pruning(am=self.joiner.encoder_proj(encoder_out),
                                                 lm=self.joiner.decoder_proj(decoder_out), ranges=ranges)
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)  # (N, T, R, V)
        with torch.autocast(device_type=device.type, enabled=False):
            pruned_loss = k.rnnt_loss_pruned(logits=logits.float(), symbols=y_padded, ranges=ranges,
                                             termination_symbol=blank, boundary=boundary, reduction="sum")
        return simple_loss, pruned_loss

    def ctc_log_probs(self, encoder_out: Tensor) -> Tensor:
        """encoder_out (N, T, C) -> CTC log-probs (N, T, V); needs ``use_ctc``."""
        if not self.use_ctc:
            raise RuntimeError(f"{_FILE}: this TransducerModel was built with use_ctc=False")
        return self.ctc_output(encoder_out)

    def forward_ctc(self, encoder_out: Tensor, encoder_out_lens: Tensor,
                    token_ids: Sequence[Sequence[int]]) -> Tensor:
        """Joint CTC loss on the 25 Hz encoder output, summed over the batch."""
        log_probs = self.ctc_log_probs(encoder_out)
        targets = torch.tensor([i for t in token_ids for i in t], dtype=torch.int64, device=encoder_out.device)
        target_lens = torch.tensor([len(t) for t in token_ids], dtype=torch.int64, device=encoder_out.device)
        return F.ctc_loss(log_probs.permute(1, 0, 2).float(), targets, encoder_out_lens, target_lens,
                          blank=self.blank_id, reduction="sum", zero_infinity=True)

    def forward(self, x: Tensor, x_lens: Tensor, token_ids: Sequence[Sequence[int]], prune_range: int = 5,
                am_scale: float = 0.0, lm_scale: float = 0.0) -> tuple[Tensor, ...]:
        """Training losses from fbank: x (N, T, 80), x_lens (N,), token_ids (N lists of ids).

        Returns (simple_loss, pruned_loss), summed over the batch; with ``use_ctc`` also the CTC
        loss as a third element.
        """
        encoder_out, encoder_out_lens = self.forward_encoder(x, x_lens)
        return self.losses(encoder_out, encoder_out_lens, token_ids, prune_range, am_scale, lm_scale)

    def losses(self, encoder_out: Tensor, encoder_out_lens: Tensor, token_ids: Sequence[Sequence[int]],
               prune_range: int = 5, am_scale: float = 0.0, lm_scale: float = 0.0) -> tuple[Tensor, ...]:
        """:meth:`forward`'s losses from an encoder output already computed (a dev pass decodes the same one)."""
        simple_loss, pruned_loss = self.forward_transducer(encoder_out, encoder_out_lens, token_ids,
                                                           prune_range, am_scale, lm_scale)
        if self.use_ctc:
            return simple_loss, pruned_loss, self.forward_ctc(encoder_out, encoder_out_lens, token_ids)
        return simple_loss, pruned_loss


def transducer_loss_scales(batch_idx_train: int, warm_step: int = 2000,
                           simple_loss_scale: float = 0.5) -> tuple[float, float]:
    """(simple_scale, pruned_scale) for ``loss = simple_scale * simple + pruned_scale * pruned``.

    icefall's warm-up: the simple loss weight falls linearly from 1 to ``simple_loss_scale`` and
    the pruned loss weight rises from 0.1 to 1 over the first ``warm_step`` batches (the pruning
    ranges come from the simple loss, so it must be trained first).
    """
    if batch_idx_train >= warm_step:
        return simple_loss_scale, 1.0
    frac = batch_idx_train / warm_step
    return 1.0 - frac * (1.0 - simple_loss_scale), 0.1 + 0.9 * frac
