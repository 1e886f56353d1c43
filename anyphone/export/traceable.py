"""Traceable forwards for the Zipformer: what :func:`export_friendly` swaps in while a graph is exported.

Export notes.  A few code paths of the eager model are written for speed or for training and do not
trace with symbolic shapes (``int(x_lens.max())`` checks, a cached positional-encoding table whose
size depends on T, a Python ``if`` on the downsampling padding).  :func:`export_friendly` swaps in
equivalent forward functions on the module *instances* for the duration of the export only; the
parity tests compare the resulting ONNX graphs with the eager model.  A family asks for it per graph
(``OnnxGraph.patch``); :mod:`anyphone.export.onnx` applies it.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from anyphone.models.fused import SWOOSH, SWOOSH_SLOPE

__all__ = ["export_friendly"]


# The forward functions below do the eager modules' arithmetic in eval mode, with no data-dependent Python.


def _subsampling_forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
    # Conv2dSubsampling.forward minus the int(x_lens.max()) check; Whiten/Dropout are identity in eval.
    x = self.conv(x.unsqueeze(1))
    x = self.convnext(x)
    n, c, t, f = x.shape
    x = x.transpose(1, 2).reshape(n, t, c * f)
    x = self.out_norm(self.out(x))
    x_lens = torch.div(x_lens - 7, 2, rounding_mode="floor")
    return x, x_lens


def _simple_downsample_forward(self, src: Tensor) -> Tensor:
    # Always concatenates the (possibly empty) padding block instead of branching on its size.
    ds = self.downsample
    if ds == 1:
        return src * self.bias.softmax(dim=0)
    t, n, c = src.shape
    t_out = (t + ds - 1) // ds
    pad = t_out * ds - t
    src = torch.cat((src, src[-1:].expand(pad, n, c)), dim=0)
    w = self.bias.softmax(dim=0).to(src.dtype)
    return (src.reshape(t_out, ds, n, c) * w.reshape(1, ds, 1, 1)).sum(dim=1)


def _rel_pos_forward(self, x: Tensor) -> Tensor:
    # CompactRelPositionalEncoding computed in-graph for exactly offsets -(T-1)..T-1 (no cached table,
    # whose size would fix T).  Each row depends only on its offset, so values equal the eager table's.
    t = x.shape[0]
    d = self.embed_dim
    off = torch.arange(2 * t - 1, device=x.device).to(torch.float32) - (t - 1)
    off = off.unsqueeze(1)
    freqs = torch.arange(1, d // 2 + 1, device=x.device).to(torch.float32)
    comp = d**0.5
    x_comp = comp * off.sign() * ((off.abs() + comp).log() - math.log(comp))
    length_scale = self.length_factor * d / (2.0 * math.pi)
    x_atan = (x_comp / length_scale).atan()
    ang = x_atan * freqs  # (2T-1, d/2)
    # interleave cos/sin as columns 0::2 / 1::2, then force the last column to 1
    pe = torch.stack((ang.cos(), ang.sin()), dim=-1).reshape(2 * t - 1, d)
    pe = torch.cat((pe[:, :-1], torch.ones_like(pe[:, :1])), dim=1)
    return pe.to(x.dtype).unsqueeze(0)


def _rel_attn_weights_forward(
    self, x: Tensor, pos_emb: Tensor, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None
) -> Tensor:
    # RelPositionMultiheadAttentionWeights in eval, with the relative->absolute shift done by gather
    # (as_strided on symbolic shapes does not map cleanly onto ONNX).
    x = self.in_proj(x)
    h, qd, pd = self.num_heads, self.query_head_dim, self.pos_head_dim
    t, n, _ = x.shape
    q = x[..., : h * qd].reshape(t, n, h, qd).permute(2, 1, 0, 3)
    k = x[..., h * qd : 2 * h * qd].reshape(t, n, h, qd).permute(2, 1, 3, 0)
    p = x[..., 2 * h * qd :].reshape(t, n, h, pd).permute(2, 1, 0, 3)
    scores = torch.matmul(q, k)  # (H, N, T, T)
    pe = self.linear_pos(pos_emb).reshape(-1, 2 * t - 1, h, pd).permute(2, 0, 3, 1)  # (H, 1, pd, 2T-1)
    pos_scores = torch.matmul(p, pe)  # (H, N, T, 2T-1), column c = offset + T - 1
    # element (i, j) takes column (T - 1) - i + j
    rows = torch.arange(t, device=x.device)
    idx = (t - 1) - rows.unsqueeze(1) + rows.unsqueeze(0)  # (T, T)
    idx = idx.expand(pos_scores.shape[0], pos_scores.shape[1], t, t)
    scores = scores + torch.gather(pos_scores, -1, idx)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, -1000.0)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask.unsqueeze(1), -1000.0)
    return scores.softmax(dim=-1)


# SwooshL / SwooshR (shift, offset) and slope: the model's own constants (k2's, fixed by ZIPA compatibility)
_SWOOSH_L, _SWOOSH_R = SWOOSH["SwooshL"], SWOOSH["SwooshR"]


def _swoosh_onnx(x: Tensor, shift: float, offset: float) -> Tensor:
    # softplus(z) written as relu(z) + log(1 + exp(-|z|)): the same value in float32 (the eager model's
    # thresholded softplus included), but it exports to cheap vectorised ops; onnxruntime's Softplus
    # kernel alone took ~60 % of the CPU time of the small model.
    xf = x.float()
    z = xf - shift
    sp = torch.relu(z) + torch.log(1.0 + torch.exp(-torch.abs(z)))
    return (sp - SWOOSH_SLOPE * xf - offset).to(x.dtype)


def _swoosh_l_forward(self, x: Tensor) -> Tensor:
    return _swoosh_onnx(x, *_SWOOSH_L)


def _swoosh_r_forward(self, x: Tensor) -> Tensor:
    return _swoosh_onnx(x, *_SWOOSH_R)


def _activation_linear_forward(self, x: Tensor) -> Tensor:
    # ActivationDropoutAndLinear in eval: swoosh, then linear (dropout is off)
    kind = _SWOOSH_L if self.activation == "SwooshL" else _SWOOSH_R
    return torch.nn.functional.linear(_swoosh_onnx(x, *kind), self.weight, self.bias)


def _patch_table() -> dict[type, Any]:
    from anyphone.models import scaling, subsampling, zipformer

    return {
        scaling.SwooshL: _swoosh_l_forward,
        scaling.SwooshR: _swoosh_r_forward,
        scaling.ActivationDropoutAndLinear: _activation_linear_forward,
        subsampling.Conv2dSubsampling: _subsampling_forward,
        zipformer.SimpleDownsample: _simple_downsample_forward,
        zipformer.CompactRelPositionalEncoding: _rel_pos_forward,
        zipformer.RelPositionMultiheadAttentionWeights: _rel_attn_weights_forward,
    }


@contextlib.contextmanager
def export_friendly(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the model's modules use export-friendly forwards (eval-mode semantics).

    Patches only the instances inside ``model`` (not the classes), and removes the patches on exit.
    """
    table = _patch_table()
    patched: list[nn.Module] = []
    try:
        for m in model.modules():
            fn = table.get(type(m))
            if fn is not None:
                m.forward = types.MethodType(fn, m)
                patched.append(m)
        yield model
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
