"""Zipformer2 encoder (pure PyTorch), numerically identical to the ZIPA / icefall model at inference.

Shapes inside the encoder are time-major, (T, N, C), like the reference implementation; the model
wrappers in ``ctc.py`` / ``transducer.py`` convert from and to (N, T, C).

Structure: a list of stacks running at 50 Hz / downsampling_factor[i]; each stack is a
:class:`Zipformer2Encoder` (wrapped in :class:`DownsampledZipformer2Encoder` when its factor is not 1);
the full-width output is assembled from the most recent stack that has each channel, then
:class:`SimpleDownsample` reduces it by ``output_downsampling_factor`` (1 for CR-CTC, 2 for transducers).
Attribute names are fixed by the checkpoint format and must not change.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    BiasNorm,
    Dropout2,
    FloatLike,
    ScheduledFloat,
    Whiten,
    convert_num_channels,
    int_tuple,
    is_exporting,
    limit_param_value,
    penalize_abs_values_gt,
    scaled_linear,
    whitening_schedule,
)

__all__ = ["Zipformer2", "make_pad_mask", "rel_to_abs"]

# Masked attention scores are set to this (not -inf) so fully-masked rows stay finite; exp(-1000) == 0.
_MASK_SCORE = -1000.0


def make_pad_mask(lengths: Tensor, max_len: int = 0) -> Tensor:
    """(N,) lengths -> (N, max(max_len, max(lengths))) bool mask, True at padded positions.

    While exporting, ``max_len`` (> 0) is used as is, so the mask follows the input's symbolic length.
    """
    n = max_len if max_len > 0 and is_exporting() else max(max_len, int(lengths.max()))
    return torch.arange(n, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


def rel_to_abs(pos_scores: Tensor) -> Tensor:
    """(H, N, T, 2T-1) scores by relative offset (column c = offset + T - 1) -> (H, N, T, T) scores
    by key position: element (i, j) takes column (T - 1) - i + j, i.e. offset j - i.

    A zero-copy strided view normally; a gather while exporting (ONNX has no as_strided).
    """
    h, n, t, _ = pos_scores.shape
    if is_exporting():
        rows = torch.arange(t - 1, -1, -1, device=pos_scores.device).unsqueeze(1)
        idx = (rows + torch.arange(t, device=pos_scores.device)).expand(h, n, t, t)
        return torch.gather(pos_scores, -1, idx)
    s = pos_scores.stride()
    return pos_scores.as_strided((h, n, t, t), (s[0], s[1], s[2] - s[3], s[3]), storage_offset=s[3] * (t - 1))


def _balancer_prob_default() -> ScheduledFloat:
    return ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)


class Zipformer2(nn.Module):
    """Multi-rate Zipformer encoder.

    Args (ints may be given per stack as tuples, or once for all stacks):
        output_downsampling_factor: extra downsampling at the output (1: 50 Hz, 2: 25 Hz).
        downsampling_factor: per-stack rate reduction relative to the 50 Hz embeddings.
        encoder_dim, num_encoder_layers, encoder_unmasked_dim, query_head_dim, pos_head_dim,
        value_head_dim, num_heads, feedforward_dim, cnn_module_kernel: per-stack sizes.
        pos_dim: size of the relative positional encoding before projection.
        dropout: dropout (rate or schedule) of feed-forward hidden units and downsampling.
        warmup_batches: batches over which layer skipping is ramped down, stack by stack.
        causal, chunk_size, left_context_frames: chunked causal training (streaming simulation).
    """

    def __init__(
        self,
        output_downsampling_factor: int = 2,
        downsampling_factor: Sequence[int] = (2, 4),
        encoder_dim: int | Sequence[int] = 384,
        num_encoder_layers: int | Sequence[int] = 4,
        encoder_unmasked_dim: int | Sequence[int] = 256,
        query_head_dim: int | Sequence[int] = 24,
        pos_head_dim: int | Sequence[int] = 4,
        value_head_dim: int | Sequence[int] = 12,
        num_heads: int | Sequence[int] = 8,
        feedforward_dim: int | Sequence[int] = 1536,
        cnn_module_kernel: int | Sequence[int] = 31,
        pos_dim: int = 192,
        dropout: FloatLike | None = None,
        warmup_batches: float = 4000.0,
        causal: bool = False,
        chunk_size: Sequence[int] = (-1,),
        left_context_frames: Sequence[int] = (-1,),
    ) -> None:
        super().__init__()
        if dropout is None:
            dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1))
        self.downsampling_factor = int_tuple(downsampling_factor, what="downsampling_factor")
        n = len(self.downsampling_factor)

        def per_stack(v, what):
            return int_tuple(v, n, what)

        self.output_downsampling_factor = output_downsampling_factor
        self.encoder_dim = per_stack(encoder_dim, "encoder_dim")
        self.encoder_unmasked_dim = per_stack(encoder_unmasked_dim, "encoder_unmasked_dim")
        self.num_encoder_layers = per_stack(num_encoder_layers, "num_encoder_layers")
        self.query_head_dim = per_stack(query_head_dim, "query_head_dim")
        self.value_head_dim = per_stack(value_head_dim, "value_head_dim")
        self.pos_head_dim = per_stack(pos_head_dim, "pos_head_dim")
        self.num_heads = per_stack(num_heads, "num_heads")
        self.feedforward_dim = per_stack(feedforward_dim, "feedforward_dim")
        self.cnn_module_kernel = per_stack(cnn_module_kernel, "cnn_module_kernel")
        self.causal = causal
        self.chunk_size = tuple(chunk_size)
        self.left_context_frames = tuple(left_context_frames)
        for u, d in zip(self.encoder_unmasked_dim, self.encoder_dim):
            if u > d:
                raise ValueError(f"Zipformer2: encoder_unmasked_dim {u} > encoder_dim {d}")

        stacks = []
        for i in range(n):
            layer = Zipformer2EncoderLayer(
                embed_dim=self.encoder_dim[i],
                pos_dim=pos_dim,
                num_heads=self.num_heads[i],
                query_head_dim=self.query_head_dim[i],
                pos_head_dim=self.pos_head_dim[i],
                value_head_dim=self.value_head_dim[i],
                feedforward_dim=self.feedforward_dim[i],
                dropout=dropout,
                cnn_module_kernel=self.cnn_module_kernel[i],
                causal=causal,
            )
            # Stack i warms up (layer-skip rate falls) during [i+1, i+2] / (n+1) of warmup_batches.
            stack: nn.Module = Zipformer2Encoder(
                layer,
                self.num_encoder_layers[i],
                pos_dim=pos_dim,
                warmup_begin=warmup_batches * (i + 1) / (n + 1),
                warmup_end=warmup_batches * (i + 2) / (n + 1),
                final_layerdrop_rate=0.035 * (self.downsampling_factor[i] ** 0.5),
            )
            if self.downsampling_factor[i] != 1:
                stack = DownsampledZipformer2Encoder(
                    stack, dim=self.encoder_dim[i], downsample=self.downsampling_factor[i], dropout=dropout
                )
            stacks.append(stack)
        self.encoders = nn.ModuleList(stacks)
        self.downsample_output = SimpleDownsample(
            max(self.encoder_dim), downsample=output_downsampling_factor, dropout=dropout
        )

    def get_feature_masks(self, x: Tensor) -> list[float | Tensor]:
        """Per-stack multiplicative channel masks (training only; 1.0 in eval).

        On ~12.5% of utterances the channels above ``encoder_unmasked_dim`` are zeroed (half of them
        on another ~12.5%), so the narrow part of each stack learns to work on its own.
        """
        n = len(self.encoder_dim)
        if not self.training:
            return [1.0] * n
        _, batch, _ = x.shape
        p = 0.125
        m1 = (torch.rand(1, batch, 1, device=x.device) > p).to(x.dtype)
        m2 = m1 * (torch.rand(1, batch, 1, device=x.device) > p).to(x.dtype)
        masks: list[float | Tensor] = []
        for dim, u1 in zip(self.encoder_dim, self.encoder_unmasked_dim):
            u2 = u1 + (dim - u1) // 2
            mask = torch.ones(1, batch, dim, dtype=x.dtype, device=x.device)
            mask[:, :, u1:u2] = mask[:, :, u1:u2] * m1
            mask[:, :, u2:] = mask[:, :, u2:] * m2
            masks.append(mask)
        return masks

    def get_chunk_info(self) -> tuple[int, int]:
        """(chunk_size, left_context_chunks) for this batch; (-1, -1) when not causal."""
        if not self.causal:
            return -1, -1
        chunk_size = random.choice(self.chunk_size) if self.training else self.chunk_size[0]
        if chunk_size == -1:
            return -1, -1
        left = random.choice(self.left_context_frames) if self.training else self.left_context_frames[0]
        left_chunks = left // chunk_size  # -1 // c == -1: unlimited
        return chunk_size, max(left_chunks, 1) if left_chunks != -1 else -1

    def _get_attn_mask(self, seq_len: int, chunk_size: int, left_chunks: int, device) -> Tensor | None:
        if chunk_size <= 0:
            return None
        if any(chunk_size % d for d in self.downsampling_factor):
            raise ValueError(
                f"Zipformer2: chunk_size {chunk_size} must be a multiple of {self.downsampling_factor}"
            )
        if left_chunks < 0:
            left_chunks = 1_000_000
        c = torch.arange(seq_len, device=device) // chunk_size
        return (c.unsqueeze(0) > c.unsqueeze(1)) | (c.unsqueeze(0) < c.unsqueeze(1) - left_chunks)

    def forward(
        self, x: Tensor, x_lens: Tensor, src_key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: (T, N, encoder_dim[0]), x_lens: (N,), src_key_padding_mask: (N, T) True = padding.

        Returns ((T', N, max(encoder_dim)), (N,)) with T' = ceil(T / output_downsampling_factor).
        """
        feature_masks = self.get_feature_masks(x)
        chunk_size, left_chunks = self.get_chunk_info()
        attn_mask = self._get_attn_mask(x.shape[0], chunk_size, left_chunks, x.device)
        outputs = []
        for i, module in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            x = module(
                x,
                chunk_size=chunk_size,
                feature_mask=feature_masks[i],
                src_key_padding_mask=None
                if src_key_padding_mask is None
                else src_key_padding_mask[..., ::ds],
                attn_mask=attn_mask,
            )
            outputs.append(x)
        x = self._get_full_dim_output(outputs)
        x = self.downsample_output(x)
        od = self.output_downsampling_factor
        lengths = torch.div(x_lens + od - 1, od, rounding_mode="floor")
        return x, lengths

    def _get_full_dim_output(self, outputs: list[Tensor]) -> Tensor:
        # Take each channel from the latest stack that has it.
        pieces = [outputs[-1]]
        cur = self.encoder_dim[-1]
        for i in range(len(outputs) - 2, -1, -1):
            d = self.encoder_dim[i]
            if d > cur:
                pieces.append(outputs[i][..., cur:d])
                cur = d
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]


class Zipformer2EncoderLayer(nn.Module):
    """One Zipformer layer on (T, N, C).

    Order: attention weights (computed once, shared); ff1; non-linear attention; self-attention 1;
    conv 1; ff2; mid bypass; self-attention 2; conv 2; ff3; BiasNorm; bypass.
    """

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        value_head_dim: int,
        feedforward_dim: int,
        dropout: FloatLike = 0.1,
        cnn_module_kernel: int = 31,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        # whole-layer skipping per utterance (rate is rescheduled by Zipformer2Encoder) plus bypass
        self.bypass = BypassModule(embed_dim, skip_rate=ScheduledFloat((0.0, 0.5), (4000.0, 0.02), default=0))
        self.bypass_mid = BypassModule(embed_dim)
        # per-utterance skipping of attention-like and conv modules, early in training only
        self.attention_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        self.conv_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        # per-utterance skipping of ff2/ff3 so they cannot dominate the residual
        self.ff2_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.ff3_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        # Kept for checkpoint compatibility: the reference defines it but only in eval-inert code.
        self.const_attention_rate = ScheduledFloat((0.0, 0.25), (4000.0, 0.025), default=0)

        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim,
            pos_dim=pos_dim,
            num_heads=num_heads,
            query_head_dim=query_head_dim,
            pos_head_dim=pos_head_dim,
        )
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Unused by the computation but present in every ZIPA checkpoint ("TODO: remove it" upstream).
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.norm = BiasNorm(embed_dim)

        # gradient-only regularisers on the residual stream and module outputs
        self.balancer1 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.2, max_abs=4.0
        )
        self.balancer_na = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.004), (4000.0, 0.02)),
            prob=0.05,
        )
        self.balancer_ff2 = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.1), default=0.0),
            max_abs=2.0,
            prob=0.05,
        )
        self.balancer_ff3 = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.2), default=0.0),
            max_abs=4.0,
            prob=0.05,
        )
        self.whiten = Whiten(
            num_groups=1,
            whitening_limit=whitening_schedule(4.0, ratio=3.0),
            prob=(0.025, 0.25),
            grad_scale=0.01,
        )
        self.balancer2 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.1, max_abs=4.0
        )

    def _utterance_mask(self, x: Tensor, rate: float) -> Tensor | None:
        # (N, 1) keep-mask for per-utterance module skipping; None when nothing is skipped.
        if not self.training or rate == 0.0:
            return None
        return (torch.rand(x.shape[1], 1, device=x.device) > rate).to(x.dtype)

    @staticmethod
    def _add(x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        return x + y if mask is None else torch.addcmul(x, y, mask)

    def forward(
        self,
        src: Tensor,
        pos_emb: Tensor,
        chunk_size: int = -1,
        attn_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """src: (T, N, C); pos_emb: (1, 2T-1, pos_dim); masks True at disallowed positions."""
        src_orig = src
        training = self.training
        attn_weights = self.self_attn_weights(
            src, pos_emb=pos_emb, attn_mask=attn_mask, key_padding_mask=src_key_padding_mask
        )  # (H, N, T, T)

        src = src + self.feed_forward1(src)

        attn_mask_u = self._utterance_mask(src, float(self.attention_skip_rate) if training else 0.0)
        # Non-linear attention uses only the first head's weights.
        na = self.nonlin_attention(src, attn_weights[0:1])
        if training:
            na = self.balancer_na(na)
        src = self._add(src, na, attn_mask_u)
        src = self._add(src, self.self_attn1(src, attn_weights), attn_mask_u)

        conv_rate = float(self.conv_skip_rate) if training else 0.0
        conv = self.conv_module1(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask)
        src = self._add(src, conv, self._utterance_mask(src, conv_rate))

        ff2 = self.feed_forward2(src)
        if training:
            ff2 = self.balancer_ff2(ff2)
        src = self._add(src, ff2, self._utterance_mask(src, float(self.ff2_skip_rate) if training else 0.0))

        src = self.bypass_mid(src_orig, src)

        src = self._add(src, self.self_attn2(src, attn_weights), attn_mask_u)
        conv = self.conv_module2(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask)
        src = self._add(src, conv, self._utterance_mask(src, conv_rate))

        ff3 = self.feed_forward3(src)
        if training:
            ff3 = self.balancer_ff3(ff3)
        src = self._add(src, ff3, self._utterance_mask(src, float(self.ff3_skip_rate) if training else 0.0))

        if training:
            src = self.balancer1(src)
        src = self.norm(src)
        src = self.bypass(src_orig, src)
        if training:
            src = self.whiten(self.balancer2(src))
        return src


class Zipformer2Encoder(nn.Module):
    """A stack of identical layers sharing one positional encoding, on (T, N, C)."""

    def __init__(
        self,
        encoder_layer: Zipformer2EncoderLayer,
        num_layers: int,
        pos_dim: int,
        warmup_begin: float,
        warmup_end: float,
        initial_layerdrop_rate: float = 0.5,
        final_layerdrop_rate: float = 0.05,
    ) -> None:
        super().__init__()
        # positional encodings are dropped out at 0.15 in training
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.15, length_factor=1.0)
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        if not 0 <= warmup_begin <= warmup_end:
            raise ValueError(f"Zipformer2Encoder: bad warmup range [{warmup_begin}, {warmup_end}]")
        # Layer i's skip rate falls from initial to final over its own slice of the warmup range.
        delta = (warmup_end - warmup_begin) / num_layers
        for i, layer in enumerate(self.layers):
            b = warmup_begin + i * delta
            layer.bypass.skip_rate = ScheduledFloat(
                (b, initial_layerdrop_rate), (b + delta, final_layerdrop_rate), default=0.0
            )

    def forward(
        self,
        src: Tensor,
        chunk_size: int = -1,
        feature_mask: Tensor | float = 1.0,
        attn_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        pos_emb = self.encoder_pos(src)
        masked = isinstance(feature_mask, Tensor)
        out = src * feature_mask if masked else src
        for layer in self.layers:
            out = layer(
                out,
                pos_emb,
                chunk_size=chunk_size,
                attn_mask=attn_mask,
                src_key_padding_mask=src_key_padding_mask,
            )
            if masked:
                out = out * feature_mask
        return out


class BypassModule(nn.Module):
    """``orig + (x - orig) * bypass_scale`` with a learnt per-channel scale.

    In training the scale is softly kept in [scale_min, scale_max] (scale_min starts near 1 so every
    module must learn something), and whole layers are skipped per utterance at ``skip_rate``.
    """

    def __init__(
        self,
        embed_dim: int,
        skip_rate: FloatLike = 0.0,
        straight_through_rate: FloatLike = 0.0,
        scale_min: FloatLike = None,
        scale_max: FloatLike = 1.0,
    ) -> None:
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = skip_rate
        self.straight_through_rate = straight_through_rate
        self.scale_min = (
            scale_min if scale_min is not None else ScheduledFloat((0.0, 0.9), (20000.0, 0.2), default=0)
        )
        self.scale_max = scale_max

    def _get_bypass_scale(self, batch_size: int) -> Tensor:
        if not self.training:
            return self.bypass_scale
        ans = limit_param_value(self.bypass_scale, float(self.scale_min), float(self.scale_max))
        skip = float(self.skip_rate)
        if skip != 0.0:
            ans = ans * (torch.rand((batch_size, 1), device=ans.device) > skip)
        st = float(self.straight_through_rate)
        if st != 0.0:
            ans = torch.maximum(ans, (torch.rand((batch_size, 1), device=ans.device) < st).to(ans.dtype))
        return ans

    def forward(self, src_orig: Tensor, src: Tensor) -> Tensor:
        """Both (T, N, C)."""
        scale = self._get_bypass_scale(src.shape[1])
        if src.dtype == src_orig.dtype == scale.dtype:
            return torch.lerp(src_orig, src, scale)  # one kernel for src_orig + (src - src_orig) * scale
        return src_orig + (src - src_orig) * scale


class DownsampledZipformer2Encoder(nn.Module):
    """Runs a Zipformer2Encoder at 1/downsample of the frame rate and bypass-combines the result."""

    def __init__(self, encoder: Zipformer2Encoder, dim: int, downsample: int, dropout: FloatLike) -> None:
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(dim, downsample, dropout)
        self.num_layers = encoder.num_layers
        self.encoder = encoder
        self.upsample = SimpleUpsample(dim, downsample)
        self.out_combiner = BypassModule(dim)

    def forward(
        self,
        src: Tensor,
        chunk_size: int = -1,
        feature_mask: Tensor | float = 1.0,
        attn_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        src_orig = src
        ds = self.downsample_factor
        src = self.downsample(src)
        if attn_mask is not None:
            attn_mask = attn_mask[::ds, ::ds]
        src = self.encoder(
            src,
            chunk_size=chunk_size // ds,
            feature_mask=feature_mask,
            attn_mask=attn_mask,
            src_key_padding_mask=src_key_padding_mask,
        )
        src = self.upsample(src)[: src_orig.shape[0]]
        return self.out_combiner(src_orig, src)


class SimpleDownsample(nn.Module):
    """(T, N, C) -> (ceil(T / ds), N, C): softmax(bias)-weighted sum over each block of ds frames.

    The last block is completed by repeating the last frame.
    """

    def __init__(self, channels: int, downsample: int, dropout: FloatLike) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(downsample))
        self.name = None
        self.dropout = copy.deepcopy(dropout)  # kept for parity with the reference; not applied
        self.downsample = downsample

    def forward(self, src: Tensor) -> Tensor:
        ds = self.downsample
        if ds == 1:
            return src * self.bias.softmax(dim=0)  # weight is exactly 1, but keeps the parameter in the graph
        t, n, c = src.shape
        t_out = (t + ds - 1) // ds
        pad = t_out * ds - t
        if is_exporting():
            # exported graphs must pad for every length, not just the traced one: index, don't branch
            idx = torch.arange(t_out * ds, device=src.device).clamp(max=t - 1)
            src = src.index_select(0, idx)
        elif pad:
            src = torch.cat((src, src[-1:].expand(pad, n, c)), dim=0)
        w = self.bias.softmax(dim=0).to(src.dtype)
        return (src.reshape(t_out, ds, n, c) * w.reshape(1, ds, 1, 1)).sum(dim=1)


class SimpleUpsample(nn.Module):
    """(T, N, C) -> (T * upsample, N, C) by repeating each frame."""

    def __init__(self, num_channels: int, upsample: int) -> None:
        super().__init__()
        self.upsample = upsample

    def forward(self, src: Tensor) -> Tensor:
        t, n, c = src.shape
        return src.unsqueeze(1).expand(t, self.upsample, n, c).reshape(t * self.upsample, n, c)


class CompactRelPositionalEncoding(nn.Module):
    """Relative positional encoding for offsets -(T-1)..(T-1), computed on the fly (no parameters).

    Offsets are compressed logarithmically beyond ~sqrt(embed_dim), mapped through atan into a
    finite interval, then encoded with embed_dim/2 cosine/sine pairs; the last dim is a constant 1.
    """

    def __init__(
        self, embed_dim: int, dropout_rate: FloatLike, max_len: int = 1000, length_factor: float = 1.0
    ):
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"CompactRelPositionalEncoding: embed_dim={embed_dim}, expected even")
        if length_factor < 1.0:
            raise ValueError(f"CompactRelPositionalEncoding: length_factor={length_factor}, expected >= 1")
        self.embed_dim = embed_dim
        self.length_factor = length_factor
        self.dropout = Dropout2(dropout_rate)
        self._cache: Tensor | None = None  # (2L-1, embed_dim) float32 table, not a buffer

    def _table(self, t: int, device: torch.device) -> Tensor:
        cache = self._cache
        if cache is not None and cache.shape[0] >= 2 * t - 1 and cache.device == device:
            return cache
        t = max(t, 1000)
        x = torch.arange(-(t - 1), t, device=device).to(torch.float32).unsqueeze(1)
        freqs = 1 + torch.arange(self.embed_dim // 2, device=device)
        comp = self.embed_dim**0.5
        # Identity slope near 0, logarithmic growth for large |offset|.
        x_comp = comp * x.sign() * ((x.abs() + comp).log() - math.log(comp))
        length_scale = self.length_factor * self.embed_dim / (2.0 * math.pi)
        x_atan = (x_comp / length_scale).atan()
        pe = torch.zeros(x.shape[0], self.embed_dim, device=device)
        pe[:, 0::2] = (x_atan * freqs).cos()
        pe[:, 1::2] = (x_atan * freqs).sin()
        pe[:, -1] = 1.0
        self._cache = pe
        return pe

    def forward(self, x: Tensor) -> Tensor:
        """x: (T, N, *) -> (1, 2T-1, embed_dim); row r encodes offset r - (T - 1)."""
        t = x.shape[0]
        pe = self._table(t, x.device)
        mid = pe.shape[0] // 2
        pos = pe[mid - t + 1 : mid + t].to(x.dtype).unsqueeze(0)
        return self.dropout(pos)


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Multi-head attention weights with relative-position scores, shared by several consumers.

    Returns (H, N, T, T) softmax weights.  No 1/sqrt(d) factor: the scale lives in the weights.
    """

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        dropout: float = 0.0,
        pos_emb_skip_rate: FloatLike = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.dropout = dropout
        # training drops the positional scores entirely on some batches early on
        self.pos_emb_skip_rate = (
            pos_emb_skip_rate if pos_emb_skip_rate is not None else ScheduledFloat((0.0, 0.5), (4000.0, 0.0))
        )
        self.name = None
        in_proj_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        self.in_proj = scaled_linear(embed_dim, in_proj_dim, bias=True, initial_scale=query_head_dim**-0.25)
        # keys: whitened per head and kept near zero mean (scores are invariant to a key offset)
        self.whiten_keys = Whiten(
            num_groups=num_heads,
            whitening_limit=whitening_schedule(3.0),
            prob=(0.025, 0.25),
            grad_scale=0.025,
        )
        self.balance_keys = Balancer(
            query_head_dim * num_heads,
            channel_dim=-1,
            min_positive=0.4,
            max_positive=0.6,
            min_abs=0.0,
            max_abs=100.0,
            prob=0.025,
        )
        self.linear_pos = scaled_linear(pos_dim, num_heads * pos_head_dim, bias=False, initial_scale=0.05)

    def forward(
        self,
        x: Tensor,
        pos_emb: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """x: (T, N, C); pos_emb: (1, 2T-1, pos_dim); key_padding_mask: (N, T); attn_mask: (T, T)."""
        x = self.in_proj(x)
        h, qd, pd = self.num_heads, self.query_head_dim, self.pos_head_dim
        t, n, _ = x.shape
        q = x[..., : h * qd]
        k = x[..., h * qd : 2 * h * qd]
        p = x[..., 2 * h * qd :]
        if self.training:
            k = self.whiten_keys(self.balance_keys(k))
        q = q.reshape(t, n, h, qd).permute(2, 1, 0, 3)  # (H, N, T, qd)
        p = p.reshape(t, n, h, pd).permute(2, 1, 0, 3)  # (H, N, T, pd)
        k = k.reshape(t, n, h, qd).permute(2, 1, 3, 0)  # (H, N, qd, T)
        scores = torch.matmul(q, k)  # (H, N, T, T)

        if not self.training or random.random() >= float(self.pos_emb_skip_rate):
            pe = self.linear_pos(pos_emb)  # (1, 2T-1, H*pd)
            pe = pe.reshape(-1, 2 * t - 1, h, pd).permute(2, 0, 3, 1)  # (H, 1, pd, 2T-1)
            pos_scores = torch.matmul(p, pe)  # (H, N, T, 2T-1), column = offset + T - 1
            # Relative -> absolute: element (i, j) takes column (T-1) - i + j, i.e. offset j - i.
            scores = scores + rel_to_abs(pos_scores)

        if self.training and random.random() < 0.1:
            # failsafe against implausibly large scores (gradient-only)
            scores = penalize_abs_values_gt(scores, limit=25.0, penalty=1.0e-04)

        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, _MASK_SCORE)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask.unsqueeze(1), _MASK_SCORE)
        weights = scores.softmax(dim=-1)
        if self.training and self.dropout > 0.0:
            weights = F.dropout(weights, p=self.dropout, training=True)
        return weights


class SelfAttention(nn.Module):
    """Applies precomputed attention weights (H, N, T, T) to per-head values of x (T, N, C)."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim, bias=True)
        self.out_proj = scaled_linear(num_heads * value_head_dim, embed_dim, bias=True, initial_scale=0.05)
        # decorrelates the output channels (gradient-only)
        self.whiten = Whiten(
            num_groups=1,
            whitening_limit=whitening_schedule(7.5, ratio=3.0),
            prob=(0.025, 0.25),
            grad_scale=0.01,
        )

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        t, n, _ = x.shape
        h = attn_weights.shape[0]
        v = self.in_proj(x).reshape(t, n, h, -1).permute(2, 1, 0, 3)  # (H, N, T, vd)
        v = torch.matmul(attn_weights, v)
        v = v.permute(2, 1, 0, 3).reshape(t, n, -1)
        out = self.out_proj(v)
        if self.training:
            out = self.whiten(out)
        return out


class FeedforwardModule(nn.Module):
    """Linear -> SwooshL -> dropout (shared over time) -> linear."""

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        # keeps hidden units alive and bounded (gradient-only)
        self.hidden_balancer = Balancer(
            feedforward_dim, channel_dim=-1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0
        )
        self.out_proj = ActivationDropoutAndLinear(
            feedforward_dim,
            embed_dim,
            activation="SwooshL",
            dropout_p=dropout,
            dropout_shared_dim=0,
            bias=True,
            initial_scale=0.1,
        )
        # decorrelates the output channels (gradient-only)
        self.out_whiten = Whiten(
            num_groups=1, whitening_limit=whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_proj(x)
        if self.training:
            x = self.hidden_balancer(x)
        x = self.out_proj(x)
        if self.training:
            x = self.out_whiten(x)
        return x


class NonlinAttention(nn.Module):
    """Gated mixing over time with attention weights in place of a convolution.

    in_proj gives (s, x, y); out = out_proj(attend(x * tanh(s)) * y), using one head's weights.
    """

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, hidden_channels * 3, bias=True)
        # keeps the pre-tanh values large enough to gate (gradient-only)
        self.balancer = Balancer(
            hidden_channels,
            channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.25), (20000.0, 0.05)),
            max_positive=ScheduledFloat((0.0, 0.75), (20000.0, 0.95)),
            min_abs=0.5,
            max_abs=5.0,
        )
        self.out_proj = scaled_linear(hidden_channels, channels, bias=True, initial_scale=0.05)
        self.whiten1 = Whiten(
            num_groups=1, whitening_limit=whitening_schedule(5.0), prob=(0.025, 0.25), grad_scale=0.01
        )
        self.whiten2 = Whiten(
            num_groups=1,
            whitening_limit=whitening_schedule(5.0, ratio=3.0),
            prob=(0.025, 0.25),
            grad_scale=0.01,
        )

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        """x: (T, N, C); attn_weights: (1, N, T, T)."""
        t, n, _ = x.shape
        s, x, y = self.in_proj(x).chunk(3, dim=-1)
        if self.training:
            s = self.balancer(s)
            x = self.whiten1(x)
        x = x * torch.tanh(s)
        h = attn_weights.shape[0]
        x = x.reshape(t, n, h, -1).permute(2, 1, 0, 3)  # (H, N, T, d)
        x = torch.matmul(attn_weights, x)
        x = x.permute(2, 1, 0, 3).reshape(t, n, -1)
        x = self.out_proj(x * y)
        if self.training:
            x = self.whiten2(x)
        return x


class ConvolutionModule(nn.Module):
    """GLU-gated depthwise convolution over time: in_proj -> x*sigmoid(s) -> depthwise conv ->
    SwooshR -> out_proj.  Padded frames are zeroed before the convolution."""

    def __init__(self, channels: int, kernel_size: int, causal: bool) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvolutionModule: kernel_size={kernel_size}, expected odd")
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        # keeps the gate inputs in a sensible range (gradient-only)
        self.balancer1 = Balancer(
            channels,
            channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.05), (8000.0, 0.025)),
            max_positive=1.0,
            min_abs=1.5,
            max_abs=ScheduledFloat((0.0, 5.0), (8000.0, 10.0), default=1.0),
        )
        if causal:
            self.depthwise_conv = ChunkCausalDepthwiseConv1d(channels, kernel_size)
        else:
            self.depthwise_conv = nn.Conv1d(
                channels, channels, kernel_size=kernel_size, groups=channels, padding=kernel_size // 2
            )
        # keeps conv outputs alive and bounded (gradient-only)
        self.balancer2 = Balancer(
            channels,
            channel_dim=1,
            min_positive=ScheduledFloat((0.0, 0.1), (8000.0, 0.05)),
            max_positive=1.0,
            min_abs=ScheduledFloat((0.0, 0.2), (20000.0, 0.5)),
            max_abs=10.0,
        )
        self.whiten = Whiten(
            num_groups=1, whitening_limit=whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01
        )
        self.out_proj = ActivationDropoutAndLinear(
            channels, channels, activation="SwooshR", dropout_p=0.0, initial_scale=0.05
        )

    def forward(self, x: Tensor, src_key_padding_mask: Tensor | None = None, chunk_size: int = -1) -> Tensor:
        """x: (T, N, C); src_key_padding_mask: (N, T) True = padding."""
        x, s = self.in_proj(x).chunk(2, dim=-1)
        if self.training:
            s = self.balancer1(s)
        x = x * torch.sigmoid(s)
        x = x.permute(1, 2, 0)  # (N, C, T)
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        if self.causal:
            x = self.depthwise_conv(x, chunk_size=chunk_size)
        else:
            x = self.depthwise_conv(x)
        if self.training:
            x = self.balancer2(x)
        x = x.permute(2, 0, 1)  # (T, N, C)
        if self.training:
            x = self.whiten(x)
        return self.out_proj(x)


class ChunkCausalDepthwiseConv1d(nn.Module):
    """Depthwise conv that is causal across chunks: a causal half-width conv over the whole past,
    plus a full-width conv inside each chunk scaled by learnt edge corrections."""

    def __init__(
        self, channels: int, kernel_size: int, initial_scale: float = 1.0, bias: bool = True
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ChunkCausalDepthwiseConv1d: kernel_size={kernel_size}, expected odd")
        self.kernel_size = kernel_size
        self.causal_conv = nn.Conv1d(channels, channels, (kernel_size + 1) // 2, groups=channels, bias=True)
        self.chunkwise_conv = nn.Conv1d(
            channels, channels, kernel_size, groups=channels, padding=kernel_size // 2, bias=bias
        )
        # rows: corrections near the left / right chunk edge, added to a scale of 1
        self.chunkwise_conv_scale = nn.Parameter(torch.zeros(2, channels, kernel_size))
        if not self.causal_conv.weight.is_meta:
            with torch.no_grad():
                self.causal_conv.weight.mul_(initial_scale)
                self.chunkwise_conv.weight.mul_(initial_scale)
                if bias:
                    nn.init.uniform_(self.causal_conv.bias, -0.1 * initial_scale, 0.1 * initial_scale)

    def _chunk_scale(self, chunk: int) -> Tensor:
        left, right = self.chunkwise_conv_scale[0], self.chunkwise_conv_scale[1]
        if chunk < self.kernel_size:
            left, right = left[:, :chunk], right[:, -chunk:]
        else:
            pad = left.new_zeros(left.shape[0], chunk - self.kernel_size)
            left, right = torch.cat((left, pad), dim=-1), torch.cat((pad, right), dim=-1)
        return 1.0 + left + right

    def forward(self, x: Tensor, chunk_size: int = -1) -> Tensor:
        """x: (N, C, T) -> (N, C, T)."""
        n, c, t = x.shape
        left_pad = self.kernel_size // 2
        if chunk_size < 0 or chunk_size > t:
            chunk_size = t
        right_pad = -t % chunk_size
        x = F.pad(x, (left_pad, right_pad))
        x_causal = self.causal_conv(x[..., : left_pad + t])
        xc = x[..., left_pad:]
        k = xc.shape[2] // chunk_size
        xc = xc.reshape(n, c, k, chunk_size).permute(0, 2, 1, 3).reshape(n * k, c, chunk_size)
        xc = self.chunkwise_conv(xc) * self._chunk_scale(chunk_size)
        xc = xc.reshape(n, k, c, chunk_size).permute(0, 2, 1, 3).reshape(n, c, k * chunk_size)[..., :t]
        return xc + x_causal
