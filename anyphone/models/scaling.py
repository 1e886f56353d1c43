"""Building blocks of the Zipformer: activations, BiasNorm, schedules and gradient-shaping modules.

Everything here is plain PyTorch. The modules that only shape training (Balancer, Whiten, ScaleGrad,
``limit_param_value``, ``penalize_abs_values_gt``, the dropouts) are exact identities in ``eval()``
mode, so an inference forward pass reduces to linear layers, convolutions, SwooshL/SwooshR, BiasNorm
and softmax.  Formulas follow the published Zipformer recipe (icefall ``zipformer/scaling.py``) so
that ZIPA checkpoints load and compute the same numbers.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused

_log = logging.getLogger(__name__)

__all__ = [
    "ActivationDropoutAndLinear",
    "Balancer",
    "BiasNorm",
    "Dropout2",
    "Dropout3",
    "FloatLike",
    "PiecewiseLinear",
    "ScaleGrad",
    "ScheduledFloat",
    "SwooshL",
    "SwooshR",
    "Whiten",
    "convert_num_channels",
    "is_exporting",
    "limit_param_value",
    "penalize_abs_values_gt",
    "scaled_conv2d",
    "scaled_linear",
    "set_batch_count",
    "swoosh_l",
    "swoosh_r",
]


def is_exporting() -> bool:
    """True while tracing, scripting or exporting (ONNX / torch.export): avoid data-dependent Python."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
    )


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


class PiecewiseLinear:
    """A piecewise-linear function of one float, given by (x, y) points sorted by x.

    Outside the given range the first / last y is returned.
    """

    def __init__(self, *points: tuple[float, float]) -> None:
        if len(points) == 1 and isinstance(points[0], PiecewiseLinear):
            points = tuple(points[0].points)
        if not points:
            raise ValueError("PiecewiseLinear: need at least one (x, y) point, got none")
        self.points = [(float(x), float(y)) for x, y in points]
        xs = [p[0] for p in self.points]
        if any(b <= a for a, b in itertools.pairwise(xs)):
            raise ValueError(f"PiecewiseLinear: x values must increase strictly, got {xs}")

    def __call__(self, x: float) -> float:
        pts = self.points
        if x <= pts[0][0]:
            return pts[0][1]
        if x >= pts[-1][0]:
            return pts[-1][1]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            if x0 <= x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        return f"PiecewiseLinear({self.points})"


class ScheduledFloat(nn.Module):
    """A float that follows a piecewise-linear schedule over the training batch count.

    Use it as ``float(module.some_rate)``.  It is an ``nn.Module`` only so that ``model.eval()`` and
    :func:`set_batch_count` reach it.  It returns ``default`` when not training or when no
    ``batch_count`` has been set, so all schedules are off at inference.
    """

    def __init__(self, *points: tuple[float, float], default: float = 0.0) -> None:
        super().__init__()
        self.batch_count: float | None = None
        self.name: str | None = None
        self.default = default
        self.schedule = PiecewiseLinear(*points)

    def extra_repr(self) -> str:
        return f"batch_count={self.batch_count}, schedule={self.schedule.points}, default={self.default}"

    def __float__(self) -> float:
        if self.batch_count is None or not self.training:
            return float(self.default)
        return float(self.schedule(self.batch_count))


FloatLike = float | ScheduledFloat


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Tell every scheduled sub-module of ``model`` the current (adjusted) training batch count.

    icefall-style training calls this every step; schedules (dropout, layer skipping, balancer
    probabilities, whitening limits...) read it.  Also gives each module a ``name`` for logging.
    """
    if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP wrapper
        model = model.module
    for name, module in model.named_modules():
        if hasattr(module, "batch_count"):
            module.batch_count = batch_count
        if hasattr(module, "name"):
            module.name = name


# ---------------------------------------------------------------------------------------------
# SwooshL / SwooshR
# ---------------------------------------------------------------------------------------------

_SWOOSH = fused.SWOOSH


def _swoosh_fwd(x: Tensor, kind: str) -> Tensor:
    """Forward value in float32 with k2's formula: log1p(exp(x - s)) - 0.08 x - offset.

    softplus computes exactly log1p(exp(z)) for z <= 20 and returns z above, where log1p(exp(z))
    rounds to z in float32 anyway (and k2 falls back to z on overflow); it is one fused pass.
    """
    shift, offset = _SWOOSH[kind]
    return fused.swoosh_value(x, shift, offset)


def swoosh_l(x: Tensor) -> Tensor:
    """SwooshL(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035, same shape and dtype as x."""
    if x.requires_grad:
        return _SwooshFunction.apply(x, "SwooshL")
    return _swoosh_fwd(x, "SwooshL").to(x.dtype)


def swoosh_r(x: Tensor) -> Tensor:
    """SwooshR(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687, same shape and dtype as x."""
    if x.requires_grad:
        return _SwooshFunction.apply(x, "SwooshR")
    return _swoosh_fwd(x, "SwooshR").to(x.dtype)


class _SwooshFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kind: str) -> Tensor:
        # On GPU the derivative is kept in 8 bits with stochastic rounding (1 byte per element instead of
        # the input); on CPU memory is plentiful and drawing the dither costs more than the activation.
        ctx.quantized = x.is_cuda
        y, d = fused.swoosh_and_derivative(x, kind, torch.uint8 if ctx.quantized else torch.float32)
        ctx.save_for_backward(d)
        return y

    @staticmethod
    def backward(ctx, y_grad: Tensor):
        (d,) = ctx.saved_tensors
        if ctx.quantized:
            return fused.scale_by_quantized_derivative(y_grad, d), None
        return (y_grad * d).to(y_grad.dtype), None


class SwooshL(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return swoosh_l(x)


class SwooshR(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return swoosh_r(x)


class _ActivationLinearFunction(torch.autograd.Function):
    """swoosh -> dropout -> linear, storing only the input (the activation is recomputed)."""

    @staticmethod
    def forward(ctx, x, weight, bias, kind: str, dropout_p: float, shared_dim: int | None):
        mask = None
        if dropout_p > 0.0:
            shape = list(x.shape)
            if shared_dim is not None:
                shape[shared_dim] = 1
            mask = (torch.rand(shape, device=x.device) > dropout_p).to(x.dtype) * (1.0 / (1.0 - dropout_p))
        y, _ = fused.swoosh_and_derivative(x, kind, mask=mask)
        ctx.kind = kind
        ctx.save_for_backward(x, weight, bias, mask)
        return F.linear(y, weight, bias)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight, bias, mask = ctx.saved_tensors
        dt = g.dtype
        # recomputed from x, the only activation kept; both come out multiplied by the dropout mask
        y, d = fused.swoosh_and_derivative(x, ctx.kind, dt, mask)
        y = y.to(dt)
        out_dim, in_dim = weight.shape
        g2 = g.reshape(-1, out_dim)
        w_grad = torch.matmul(g2.t(), y.reshape(-1, in_dim)).to(weight.dtype)
        b_grad = None if bias is None else g2.sum(dim=0).to(bias.dtype)
        x_grad = (torch.matmul(g, weight.to(dt)) * d).to(x.dtype)
        return x_grad, w_grad, b_grad, None, None, None


class ActivationDropoutAndLinear(nn.Module):
    """SwooshL/SwooshR, then (optionally time-shared) dropout, then a linear layer.

    Parameters are ``weight`` (out, in) and ``bias`` (out,), as in ZIPA checkpoints.  In training it
    uses a custom autograd function that keeps only the input for backprop.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        activation: str = "SwooshL",
        dropout_p: FloatLike = 0.0,
        dropout_shared_dim: int | None = -1,
        initial_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in _SWOOSH:
            raise ValueError(
                f"ActivationDropoutAndLinear: activation={activation!r}, expected SwooshL/SwooshR"
            )
        lin = scaled_linear(in_channels, out_channels, bias=bias, initial_scale=initial_scale)
        self.weight = lin.weight
        self.register_parameter("bias", lin.bias)
        self.activation = activation
        self.dropout_p = dropout_p
        self.dropout_shared_dim = dropout_shared_dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not torch.is_grad_enabled():
            y = _swoosh_fwd(x, self.activation).to(x.dtype)
            return F.linear(y, self.weight, self.bias)
        return _ActivationLinearFunction.apply(
            x, self.weight, self.bias, self.activation, float(self.dropout_p), self.dropout_shared_dim
        )


# ---------------------------------------------------------------------------------------------
# Normalisation and initialisation helpers
# ---------------------------------------------------------------------------------------------


class BiasNorm(nn.Module):
    """LayerNorm replacement: ``x * mean((x - bias)^2)^-0.5 * exp(log_scale)`` over ``channel_dim``.

    The bias only enters the scale (it is not subtracted from the output); no epsilon.  In training,
    ``log_scale`` is softly kept in [log_scale_min, log_scale_max] through its gradient.
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int = -1,
        log_scale: float = 1.0,
        log_scale_min: float = -1.5,
        log_scale_max: float = 1.5,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.log_scale = nn.Parameter(torch.tensor(log_scale))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale_min = log_scale_min
        self.log_scale_max = log_scale_max

    def forward(self, x: Tensor) -> Tensor:
        cd = self.channel_dim if self.channel_dim >= 0 else self.channel_dim + x.ndim
        bias = self.bias.reshape([-1] + [1] * (x.ndim - cd - 1))
        log_scale = self.log_scale
        if self.training:
            log_scale = limit_param_value(log_scale, self.log_scale_min, self.log_scale_max)
        scales = torch.mean((x - bias) ** 2, dim=cd, keepdim=True) ** -0.5 * log_scale.exp()
        return x * scales


def scaled_linear(*args, initial_scale: float = 1.0, **kwargs) -> nn.Linear:
    """``nn.Linear`` whose initial weight is scaled by ``initial_scale`` and bias ~ U(+-0.1*scale)."""
    lin = nn.Linear(*args, **kwargs)
    _rescale_init(lin, initial_scale)
    return lin


def scaled_conv2d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv2d:
    """``nn.Conv2d`` with the same initial scaling as :func:`scaled_linear`."""
    conv = nn.Conv2d(*args, **kwargs)
    _rescale_init(conv, initial_scale)
    return conv


def _rescale_init(m: nn.Module, scale: float) -> None:
    if m.weight.is_meta:
        return
    with torch.no_grad():
        m.weight.mul_(scale)
        if m.bias is not None:
            nn.init.uniform_(m.bias, -0.1 * scale, 0.1 * scale)


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    """Truncate or zero-pad the last dim of x to ``num_channels``."""
    c = x.shape[-1]
    if num_channels <= c:
        return x[..., :num_channels]
    pad = x.new_zeros(*x.shape[:-1], num_channels - c)
    return torch.cat((x, pad), dim=-1)


# ---------------------------------------------------------------------------------------------
# Dropouts
# ---------------------------------------------------------------------------------------------


class Dropout2(nn.Module):
    """Ordinary dropout whose rate may be a ScheduledFloat."""

    def __init__(self, p: FloatLike) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        return F.dropout(x, p=float(self.p), training=True)


class Dropout3(nn.Module):
    """Dropout with a scheduled rate whose mask is shared along ``shared_dim`` (e.g. time)."""

    def __init__(self, p: FloatLike, shared_dim: int) -> None:
        super().__init__()
        self.p = p
        self.shared_dim = shared_dim

    def forward(self, x: Tensor) -> Tensor:
        p = float(self.p)
        if not self.training or p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        mask = (torch.rand(shape, device=x.device) > p).to(x.dtype)
        return x * mask * (1.0 / (1.0 - p))


# ---------------------------------------------------------------------------------------------
# Gradient-shaping modules (identity in the forward pass)
# ---------------------------------------------------------------------------------------------


class _ScaleGradFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g * ctx.alpha, None


class ScaleGrad(nn.Module):
    """Identity forward; multiplies the gradient by ``alpha`` (keeps early-layer grads in fp16 range)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not x.requires_grad:
            return x
        return _ScaleGradFunction.apply(x, self.alpha)


class _LimitParamValueFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        # Below the range, force gradients negative (the optimizer then raises x); above it, positive.
        g = torch.where((g > 0) & (x < ctx.lo), -g, g)
        g = torch.where((g < 0) & (x > ctx.hi), -g, g)
        return g, None, None


def limit_param_value(x: Tensor, lo: float, hi: float, prob: float = 0.6, training: bool = True) -> Tensor:
    """Identity forward; on a random ``prob`` of calls, flips gradients that would push x out of [lo, hi]."""
    if training and x.requires_grad and random.random() < prob:
        return _LimitParamValueFunction.apply(x, lo, hi)
    return x


class _WithLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        ctx.y_shape = y.shape
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, torch.ones(ctx.y_shape, dtype=g.dtype, device=g.device)


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float) -> Tensor:
    """Identity forward; adds ``penalty * relu(|x| - limit)`` to the loss through the gradient only."""
    if not x.requires_grad:
        return x
    over = ((x.abs() - limit) > 0).to(torch.int8) * x.sign().to(torch.int8)
    aux = penalty * (over * x)  # gradient w.r.t. x is penalty * sign(x) where |x| > limit
    return _WithLossFunction.apply(x, aux)


def _abs_to_rms(a: float) -> float:
    # For Gaussian data E|x| = sqrt(2/pi) * rms.
    return 1.25331413732 * a


def _proportion_positive_to_mean(p: float) -> float:
    # Rough inverse: P(x > 0) = p  <=>  mean / stddev = erfinv(2p - 1) * sqrt(2), approximated by atanh.
    z = -1.0 + 2.0 * p
    eps = 1.0e-10
    atanh = (math.log(1 + z + eps) - math.log(1 - z + eps)) / 2.0
    return 0.8139535143 * atanh


def _accurate_dtype(device: torch.device) -> torch.dtype:
    """float64 for small per-channel algebra, except where the device has none (Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _balancer_loss(mean: Tensor, sq_mean: Tensor, min_mean, max_mean, min_rms, max_rms) -> Tensor:
    """The Balancer's penalty from per-channel E[x] and E[x^2]: 0 while both constraints hold."""
    std = (sq_mean - mean * mean).clamp(min=1.0e-20).sqrt()
    rms = sq_mean.clamp(min=1.0e-20).sqrt()
    m = mean / std
    loss_mean = (m - m.clamp(min=min_mean, max=max_mean)).abs()
    loss_rms = (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
    return (loss_mean + loss_rms).sum()


class _BalancerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim) -> Tensor:
        ctx.save_for_backward(x)
        ctx.cfg = (min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim % x.ndim)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        min_mean, max_mean, min_rms, max_rms, grad_scale, cd = ctx.cfg
        try:
            # The penalty depends on x only through the per-channel mean and variance, so its gradient is
            # a + b * x per channel: autograd runs on the (C,) statistics and the full-size work is one
            # reduction and one fused pass (icefall differentiates through every element, ~25 full passes).
            # The per-channel algebra is in float64: near-constant channels make b huge and would
            # overflow or cancel in float32.
            with torch.autocast(x.device.type, enabled=False):
                dims = [i for i in range(x.ndim) if i != cd]
                count = x.numel() // x.shape[cd]
                var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
                acc = _accurate_dtype(x.device)
                var, mean = var.to(acc).clamp(min=0.0), mean.to(acc)
                with torch.enable_grad():
                    mean_p = mean.clone().requires_grad_(True)
                    sq_mean_p = (var + mean * mean).requires_grad_(True)
                    loss = _balancer_loss(mean_p, sq_mean_p, min_mean, max_mean, min_rms, max_rms)
                    g_mean, g_sq_mean = torch.autograd.grad(loss, (mean_p, sq_mean_p))
                a = g_mean / count  # d loss / d x = a + b * x
                b = g_sq_mean * (2.0 / count)
                # mean square of (a + b x) over the channel: (a + b mean)^2 + b^2 var, both terms >= 0
                centre = a + b * mean
                ms = centre * centre + b * b * var
                scale = grad_scale / ms.sqrt().clamp(min=1.0e-20)
                # Scale the constraint gradient by |x_grad| elementwise: a noisy per-element magnitude.
                x_grad = fused.balancer_gradient(x_grad, x, (a * scale).float(), (b * scale).float(), cd)
        except RuntimeError as e:  # never let a regulariser kill a training run
            _log.warning(
                f"Balancer backward failed ({e}) for shape {list(x_grad.shape)}; gradient left as is"
            )
        return x_grad, None, None, None, None, None, None


class Balancer(nn.Module):
    """Identity forward; in training nudges gradients so each channel keeps its sign balance
    (proportion positive in [min_positive, max_positive]) and magnitude (mean |x| in [min_abs, max_abs]).

    Applied on a random ``prob`` of calls.
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int,
        min_positive: FloatLike = 0.05,
        max_positive: FloatLike = 0.95,
        min_abs: FloatLike = 0.2,
        max_abs: FloatLike = 100.0,
        grad_scale: FloatLike = 0.04,
        prob: FloatLike | None = None,
    ) -> None:
        super().__init__()
        if prob is None:
            prob = ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)
        self.prob = prob
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.grad_scale = grad_scale

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not x.requires_grad or random.random() >= float(self.prob):
            return x
        return _BalancerFunction.apply(
            x,
            _proportion_positive_to_mean(float(self.min_positive)),
            _proportion_positive_to_mean(float(self.max_positive)),
            _abs_to_rms(float(self.min_abs)),
            _abs_to_rms(float(self.max_abs)),
            float(self.grad_scale),
            self.channel_dim,
        )


def _centred_groups(x: Tensor, num_groups: int) -> Tensor:
    """(..., C) -> float32 (groups, frames, C / groups), each column centred over the frames."""
    c = x.shape[-1]
    xg = x.reshape(-1, num_groups, c // num_groups).transpose(0, 1).float()
    return xg - xg.mean(dim=1, keepdim=True)


class _WhitenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, module: Whiten) -> Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        return x.view_as(x)

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        w: Whiten = ctx.module
        try:
            with torch.autocast(x.device.type, enabled=False):
                # metric = S / D^2 with S = sum(cov^2) / k and D = trace(cov) / k, cov = Xc^T Xc per group.
                # Its gradient is Xc @ H with H = 4 / (k D^2) (cov - (S / D) I): one matmul, where autograd
                # through the metric took about twice the full-size passes. The centring drops out
                # because Xc's columns already have zero mean.
                xc = _centred_groups(x, w.num_groups)
                cov = torch.matmul(xc.transpose(1, 2), xc).to(_accurate_dtype(x.device))  # (C, C) in float64
                k = cov.shape[0] * cov.shape[1]
                d = torch.diagonal(cov, dim1=1, dim2=2).sum() / k
                e = d * d + 1.0e-20
                sq = (cov**2).sum() / k
                if sq / e < float(w.whitening_limit):
                    w.prob = w.min_prob
                    return x_grad, None
                w.prob = w.max_prob
                eye = torch.eye(cov.shape[1], device=cov.device, dtype=cov.dtype)
                h = (cov - (sq * d / e) * eye) * (4.0 / (k * e))
                # |Xc H|^2 = sum_g trace(H cov H): the penalty gradient's norm without forming it first
                pg_norm = (h * torch.matmul(cov, h)).sum().clamp(min=0.0).sqrt()
                g_norm = torch.linalg.vector_norm(x_grad, dtype=torch.float32)
                h = h * (float(w.grad_scale) * g_norm / (pg_norm + 1.0e-20))
                pg = torch.matmul(xc, h.float()).transpose(0, 1).reshape(x_grad.shape)
                return x_grad + pg.to(x_grad.dtype), None
        except RuntimeError as e:
            _log.warning(f"Whiten backward failed ({e}) for shape {list(x_grad.shape)}; gradient left as is")
        return x_grad, None


class Whiten(nn.Module):
    """Identity forward; in training adds a gradient that pushes the feature covariance of each
    channel group towards a multiple of the identity once the whitening metric exceeds the limit.

    Applied with probability ``prob`` (min_prob while satisfied, max_prob after a violation).
    """

    def __init__(
        self,
        num_groups: int,
        whitening_limit: FloatLike,
        prob: float | tuple[float, float],
        grad_scale: FloatLike,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.whitening_limit = whitening_limit
        self.grad_scale = grad_scale
        if isinstance(prob, (int, float)):
            prob = (float(prob), float(prob))
        self.min_prob, self.max_prob = prob
        self.prob = self.max_prob
        self.name: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if (
            not self.training
            or not x.requires_grad
            or float(self.grad_scale) == 0.0
            or random.random() > self.prob
        ):
            return x
        return _WhitenFunction.apply(x, self)


def whitening_schedule(x: float, ratio: float = 2.0) -> ScheduledFloat:
    """Whitening limit that starts at x and relaxes to ratio * x over 20k batches."""
    return ScheduledFloat((0.0, x), (20000.0, ratio * x), default=x)


def int_tuple(value: int | str | Sequence[int], n: int | None = None, what: str = "value") -> tuple[int, ...]:
    """Parse ``"1,2, 3"`` / 3 / (1, 2, 3) into a tuple of ints; broadcast a single value to ``n``."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            out = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"{what}: cannot parse {value!r} as comma-separated integers") from None
    elif isinstance(value, int):
        out = (value,)
    else:
        out = tuple(int(v) for v in value)
    if n is not None:
        if len(out) == 1:
            out = out * n
        elif len(out) != n:
            raise ValueError(f"{what}: got {len(out)} values {out}, expected 1 or {n}")
    return out
