"""Fused elementwise operators for training on a GPU.

A Zipformer training step on a GPU is bound by memory traffic, not arithmetic: SwooshL/SwooshR and the
Balancer's gradient were chains of 5-25 full-size PyTorch kernels each, mostly in float32. Each operator here
reads its inputs once and writes its outputs once:

- :func:`swoosh_and_derivative`: the swoosh value and, optionally, its derivative (8-bit with stochastic
  rounding, or in a float dtype) for the backward pass;
- :func:`scale_by_quantized_derivative`: ``grad * derivative`` from the 8-bit form;
- :func:`balancer_gradient`: ``grad + |grad| * (a + b * x)`` with per-channel ``a`` and ``b``.

On CUDA, with Triton importable and ``ANYPHONE_TRITON`` not ``0``, each is one Triton kernel; elsewhere
(and if a kernel ever fails to compile or launch) the same formula runs as plain PyTorch ops. They are
registered as ``torch.library`` custom operators, so profilers, ``torch.compile`` and tracers see one op.
Used only by training code paths: inference and export run plain PyTorch (see ``scaling.py``).
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from anyphone.utils import LazyKernels

# (shift, offset) of swoosh(x) = log(1 + exp(x - shift)) - 0.08 * x - offset
SWOOSH = {"SwooshL": (4.0, 0.035), "SwooshR": (1.0, 0.313261687)}
SWOOSH_SLOPE = 0.08
# The derivative of a swoosh lies in [-0.08, 0.92]; 8 bits with stochastic rounding keep it unbiased at
# 1 byte per element.
DERIV_LO, DERIV_HI = -0.08, 0.925
_Q_SCALE = 255.0 / (DERIV_HI - DERIV_LO)


def triton_enabled(x: Tensor) -> bool:
    """Whether the Triton kernels serve tensors like ``x`` (CUDA, Triton importable, not disabled)."""
    return TRITON.available(x)


def _run_triton(name: str, *args):
    """A Triton launcher's result, or None after a failure (then PyTorch serves the rest of the run)."""
    ok, out = TRITON.call(name, *args)
    return out if ok else None


# ---------------------------------------------------------------------------------------------
# The formulas in PyTorch (CPU, and CUDA without Triton)
# ---------------------------------------------------------------------------------------------


def swoosh_value(x: Tensor, shift: float, offset: float) -> Tensor:
    """float32 swoosh value: softplus(x - shift) - 0.08 x - offset (k2's formula, exact for x - shift <= 20)."""
    xf = x.float()
    return torch.add(F.softplus(xf - shift), xf, alpha=-SWOOSH_SLOPE).sub_(offset)


def swoosh_slope(x: Tensor, shift: float) -> Tensor:
    """float32 derivative of the swoosh: sigmoid(x - shift) - 0.08."""
    return torch.sigmoid(x.float() - shift) - SWOOSH_SLOPE


def _swoosh_torch(
    x: Tensor, shift: float, offset: float, deriv_dtype: torch.dtype | None, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    y = swoosh_value(x, shift, offset).to(x.dtype)
    if mask is not None:
        y = y * mask
    if deriv_dtype is None:
        return y, x.new_empty(0)
    d = swoosh_slope(x, shift)
    if deriv_dtype == torch.uint8:
        q = (d - DERIV_LO) * _Q_SCALE + torch.rand_like(d)
        return y, q.clamp_(0.0, 255.0).to(torch.uint8)
    d = d.to(deriv_dtype)
    return y, d if mask is None else d * mask


# ---------------------------------------------------------------------------------------------
# Custom operators
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("anyphone::swoosh_and_derivative", mutates_args=())
def _swoosh_op(
    x: Tensor, shift: float, offset: float, deriv_dtype: torch.dtype | None, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    if triton_enabled(x):
        out = _run_triton("swoosh", x, shift, offset, deriv_dtype, mask)
        if out is not None:
            return out
    return _swoosh_torch(x, shift, offset, deriv_dtype, mask)


@_swoosh_op.register_fake
def _(x, shift, offset, deriv_dtype, mask):
    d = x.new_empty(0) if deriv_dtype is None else torch.empty_like(x, dtype=deriv_dtype)
    return torch.empty_like(x), d


def swoosh_and_derivative(
    x: Tensor, kind: str, deriv_dtype: torch.dtype | None = None, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``kind`` ("SwooshL" / "SwooshR") of x in x's dtype, and its derivative for backprop.

    deriv_dtype: None (no derivative; an empty tensor is returned), ``torch.uint8`` (8-bit with stochastic
    rounding over [DERIV_LO, DERIV_HI]; undo with :func:`scale_by_quantized_derivative`) or a float dtype.
    mask: an optional dropout mask of x's dtype, broadcast against x along at most one dimension (size 1
    there); the value and a float derivative come out multiplied by it.  The value is computed in float32
    whatever x's dtype.
    """
    if mask is not None:
        if deriv_dtype == torch.uint8:
            raise ValueError("swoosh_and_derivative: a dropout mask cannot go with the 8-bit derivative")
        if mask.dim() != x.dim() or sum(m != s for m, s in zip(mask.shape, x.shape)) > 1:
            raise ValueError(f"swoosh_and_derivative: mask {list(mask.shape)} must match x {list(x.shape)} "
                             "except for one dimension of size 1")
    shift, offset = SWOOSH[kind]
    return _swoosh_op(x, shift, offset, deriv_dtype, mask)


@torch.library.custom_op("anyphone::scale_by_quantized_derivative", mutates_args=())
def scale_by_quantized_derivative(grad: Tensor, q: Tensor) -> Tensor:
    """grad * (q * (DERIV_HI - DERIV_LO) / 255 + DERIV_LO), in grad's dtype; q is uint8 of grad's shape."""
    if triton_enabled(grad):
        out = _run_triton("dequantize_mul", grad, q)
        if out is not None:
            return out
    d = q.to(grad.dtype) * (1.0 / _Q_SCALE) + DERIV_LO
    return grad * d


@scale_by_quantized_derivative.register_fake
def _(grad, q):
    return torch.empty_like(grad)


@torch.library.custom_op("anyphone::balancer_gradient", mutates_args=())
def balancer_gradient(grad: Tensor, x: Tensor, a: Tensor, b: Tensor, channel_dim: int) -> Tensor:
    """grad + |grad| * (a + b * x) in grad's dtype, computed in float32.

    grad, x: the same shape; a, b: float32, one value per channel of ``channel_dim`` (any shape that
    broadcasts against x along that dim only).
    """
    if triton_enabled(grad):
        out = _run_triton("balancer", grad, x, a, b, channel_dim)
        if out is not None:
            return out
    lg = torch.addcmul(a, b, x)
    return torch.addcmul(grad, grad.abs(), lg).to(grad.dtype)


@balancer_gradient.register_fake
def _(grad, x, a, b, channel_dim):
    return torch.empty_like(grad)


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


def build_triton_kernels() -> SimpleNamespace:
    """Compile-on-first-use Triton kernels and their launchers (tests run them with TRITON_INTERPRET=1)."""
    import triton
    import triton.language as tl

    block = 1024

    @triton.jit
    def swoosh_kernel(X, Y, D, M, n, inner, shared, shift, offset, slope, lo, q_scale, seed,
                      DERIV: tl.constexpr, QUANT: tl.constexpr, MASK: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        x = tl.load(X + offs, mask=inside, other=0.0).to(tl.float32)
        z = x - shift
        e = tl.exp(-tl.abs(z))  # stable softplus and sigmoid from one exp
        y = tl.maximum(z, 0.0) + tl.log(1.0 + e) - slope * x - offset
        m = tl.full([BLOCK], 1.0, tl.float32)  # defined on both paths of the compile-time branch below
        if MASK:
            # the mask has size 1 in one dimension: `shared` of x's size there, `inner` elements after it
            m = tl.load(M + (offs // (inner * shared)) * inner + offs % inner, mask=inside, other=0.0)
            m = m.to(tl.float32)
            y = y.to(Y.dtype.element_ty).to(tl.float32) * m  # round first, as the PyTorch path does
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=inside)
        if DERIV:
            d = tl.where(z >= 0, 1.0, e) / (1.0 + e) - slope
            if MASK:
                d = d.to(D.dtype.element_ty).to(tl.float32) * m
            if QUANT:
                noise = tl.rand(seed, offs.to(tl.int32))
                q = tl.minimum(tl.maximum((d - lo) * q_scale + noise, 0.0), 255.0)
                tl.store(D + offs, q.to(tl.uint8), mask=inside)
            else:
                tl.store(D + offs, d.to(D.dtype.element_ty), mask=inside)

    @triton.jit
    def dequantize_mul_kernel(G, Q, OUT, n, lo, inv_q_scale, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        g = tl.load(G + offs, mask=inside, other=0.0).to(tl.float32)
        q = tl.load(Q + offs, mask=inside, other=0).to(tl.float32)
        tl.store(OUT + offs, (g * (q * inv_q_scale + lo)).to(OUT.dtype.element_ty), mask=inside)

    @triton.jit
    def balancer_kernel(G, X, A, B, OUT, n, inner, channels, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        c = (offs // inner) % channels
        g = tl.load(G + offs, mask=inside, other=0.0).to(tl.float32)
        x = tl.load(X + offs, mask=inside, other=0.0).to(tl.float32)
        a = tl.load(A + c, mask=inside, other=0.0)
        b = tl.load(B + c, mask=inside, other=0.0)
        tl.store(OUT + offs, (g + tl.abs(g) * (a + b * x)).to(OUT.dtype.element_ty), mask=inside)

    def grid(n: int) -> tuple[int]:
        return (triton.cdiv(n, block),)

    def swoosh(x: Tensor, shift: float, offset: float, deriv_dtype: torch.dtype | None, mask: Tensor | None):
        x = x.contiguous()
        y = torch.empty_like(x)
        d = x.new_empty(0) if deriv_dtype is None else torch.empty_like(x, dtype=deriv_dtype)
        n = x.numel()
        inner, shared = 1, 1
        if mask is not None:
            mask = mask.contiguous()
            dims = [i for i, (m, s) in enumerate(zip(mask.shape, x.shape)) if m != s]
            if dims:
                inner, shared = _inner_size(x.shape, dims[0]), x.shape[dims[0]]
        if n:
            # the dither's seed comes from Python's RNG, which the trainer seeds per rank
            seed = random.randrange(2**31 - 1)
            swoosh_kernel[grid(n)](x, y, d if deriv_dtype is not None else y, mask if mask is not None else x,
                                   n, inner, shared, shift, offset, SWOOSH_SLOPE, DERIV_LO, _Q_SCALE, seed,
                                   DERIV=deriv_dtype is not None, QUANT=deriv_dtype == torch.uint8,
                                   MASK=mask is not None, BLOCK=block)
        return y, d

    def dequantize_mul(grad: Tensor, q: Tensor) -> Tensor:
        grad, q = grad.contiguous(), q.contiguous()
        out = torch.empty_like(grad)
        if grad.numel():
            dequantize_mul_kernel[grid(grad.numel())](grad, q, out, grad.numel(), DERIV_LO, 1.0 / _Q_SCALE,
                                                      BLOCK=block)
        return out

    def balancer(grad: Tensor, x: Tensor, a: Tensor, b: Tensor, channel_dim: int) -> Tensor:
        grad, x = grad.contiguous(), x.contiguous()
        cd = channel_dim % x.ndim
        channels = x.shape[cd]
        inner = _inner_size(x.shape, cd)
        out = torch.empty_like(grad)
        n = grad.numel()
        if n:
            a = a.reshape(channels).float().contiguous()
            b = b.reshape(channels).float().contiguous()
            balancer_kernel[grid(n)](grad, x, a, b, out, n, inner, channels, BLOCK=block)
        return out

    return SimpleNamespace(swoosh=swoosh, dequantize_mul=dequantize_mul, balancer=balancer)


def _inner_size(shape: torch.Size, dim: int) -> int:
    size = 1
    for s in shape[dim + 1 :]:
        size *= s
    return size


TRITON = LazyKernels(build_triton_kernels, "ANYPHONE_TRITON", "anyphone.models.fused")
