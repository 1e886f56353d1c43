"""Zipformer CTC / CR-CTC model with ZIPA's state_dict layout.

Keys: ``encoder_embed.*`` (Conv2dSubsampling), ``encoder.*`` (Zipformer2, output at 50 Hz) and
``ctc_output.1.*`` (Sequential(Dropout, Linear, LogSoftmax)).  The CR-CTC loss lives in
``anyphone.losses.crctc``; this module only computes encoder outputs and CTC log-probs.
"""

from __future__ import annotations

from torch import Tensor, nn

from .presets import ZipformerConfig
from .scaling import ScheduledFloat
from .subsampling import Conv2dSubsampling
from .zipformer import Zipformer2, make_pad_mask

__all__ = ["CtcModel", "build_encoder", "count_parameters", "forward_encoder"]


def build_encoder(
    cfg: ZipformerConfig, output_downsampling_factor: int = 1
) -> tuple[Conv2dSubsampling, Zipformer2]:
    """Build ``(encoder_embed, encoder)`` as ZIPA's ``train.get_model`` does.

    output_downsampling_factor: 1 for CTC/CR-CTC (50 Hz output), 2 for transducers (25 Hz).
    """
    enc_dim = cfg.encoder_dim_per_stack
    encoder_embed = Conv2dSubsampling(
        in_channels=cfg.feature_dim,
        out_channels=enc_dim[0],
        layer1_channels=cfg.embed_channels[0],
        layer2_channels=cfg.embed_channels[1],
        layer3_channels=cfg.embed_channels[2],
        dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)),
    )
    encoder = Zipformer2(
        output_downsampling_factor=output_downsampling_factor,
        downsampling_factor=cfg.downsampling_factor,
        num_encoder_layers=cfg.num_encoder_layers,
        encoder_dim=cfg.encoder_dim,
        encoder_unmasked_dim=cfg.encoder_unmasked_dim,
        query_head_dim=cfg.query_head_dim,
        pos_head_dim=cfg.pos_head_dim,
        value_head_dim=cfg.value_head_dim,
        pos_dim=cfg.pos_dim,
        num_heads=cfg.num_heads,
        feedforward_dim=cfg.feedforward_dim,
        cnn_module_kernel=cfg.cnn_module_kernel,
        dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)),
        warmup_batches=4000.0,
        causal=cfg.causal,
        chunk_size=cfg.chunk_size,
        left_context_frames=cfg.left_context_frames,
    )
    return encoder_embed, encoder


def forward_encoder(
    encoder_embed: nn.Module, encoder: nn.Module, x: Tensor, x_lens: Tensor
) -> tuple[Tensor, Tensor]:
    """Shared encoder pass: x (N, T, F) zero-padded fbank, x_lens (N,) ->
    (encoder_out (N, T', C), encoder_out_lens (N,)).  T' = (T-7)//2 at 50 Hz, halved again by an
    output downsampling factor of 2."""
    x, x_lens = encoder_embed(x, x_lens)
    mask = make_pad_mask(x_lens, x.shape[1])
    out, out_lens = encoder(x.permute(1, 0, 2), x_lens, mask)
    return out.permute(1, 0, 2), out_lens


class CtcModel(nn.Module):
    """Zipformer encoder + CTC head, loadable from ZIPA CR-CTC checkpoints with ``strict=True``."""

    def __init__(self, cfg: ZipformerConfig, ctc_dropout: float = 0.1) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder_embed, self.encoder = build_encoder(cfg, output_downsampling_factor=1)
        self.ctc_output = nn.Sequential(
            nn.Dropout(p=ctc_dropout),
            nn.Linear(cfg.output_dim, cfg.vocab_size),
            nn.LogSoftmax(dim=-1),
        )

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def forward_encoder(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, T, 80) zero-padded fbank with T == max(x_lens); x_lens: (N,) int64.

        Returns encoder_out (N, (T-7)//2, max(encoder_dim)) and encoder_out_lens (N,).
        """
        return forward_encoder(self.encoder_embed, self.encoder, x, x_lens)

    def ctc_log_probs(self, encoder_out: Tensor) -> Tensor:
        """encoder_out (N, T, C) -> CTC log-probabilities (N, T, vocab_size)."""
        return self.ctc_output(encoder_out)

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Convenience for inference/export: (log_probs (N, T', V), lengths (N,))."""
        encoder_out, encoder_out_lens = self.forward_encoder(x, x_lens)
        return self.ctc_log_probs(encoder_out), encoder_out_lens


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (works on the meta device too)."""
    return sum(p.numel() for p in model.parameters())
