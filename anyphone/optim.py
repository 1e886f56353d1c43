"""ScaledAdam optimizer and Eden learning-rate schedule (Zipformer paper, Yao et al. 2023, section 3).

ScaledAdam makes every update of a non-scalar tensor proportional to that tensor's current RMS value, so the
learning rate is a *relative* change per step and layers of very different magnitudes train at the same
speed. The overall scale of each tensor is learnt separately (as if ``p = p_hat * exp(s)`` with a learnable
``s``), limited to ``[param_min_rms, param_max_rms]``. Gradient clipping uses a threshold of
``clipping_scale`` times the median of recent (RMS-scaled) gradient norms, so it needs no absolute tuning.

Eden decays the learning rate with both the batch count and the epoch count, after a short linear warm-up:

    lr = base_lr * ((batch^2 + lr_batches^2) / lr_batches^2) ** -0.25
                 * ((epoch^2 + lr_epochs^2) / lr_epochs^2) ** -0.25 * warmup(batch)

with ``warmup`` rising linearly from ``warmup_start`` (0.5) at batch 0 to 1.0 at ``warmup_batches``.

Both objects have ``state_dict()`` / ``load_state_dict()`` made only of tensors and plain Python containers,
so checkpoints can be read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["Eden", "LRScheduler", "ScaledAdam"]

logger = logging.getLogger(__name__)

# Steps at which a first, provisional clipping threshold is estimated before the first full period ends.
_EARLY_ESTIMATE_STEPS = (10, 20, 40)


def _normalise_param_groups(params: Any) -> list[dict[str, Any]]:
    """Turn any accepted ``params`` form into a list of groups that each carry ``param_names``.

    Accepted: an iterable of tensors, an iterable of ``(name, tensor)`` pairs (``model.named_parameters()``),
    or a list of dicts with either ``params`` (tensors or pairs) or icefall's ``named_params`` key.
    Unnamed parameters get placeholder names ``group{g}.param{i}`` so warnings can still point at one.
    """
    items = list(params)
    if len(items) == 0:
        raise ValueError("ScaledAdam got an empty parameter list; expected at least one tensor")
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    out = []
    for g_idx, group in enumerate(groups):
        group = dict(group)
        if "named_params" in group:
            entries = list(group.pop("named_params"))
        else:
            entries = group["params"]
            entries = [entries] if isinstance(entries, Tensor) else list(entries)
        tensors, names = [], []
        for i, entry in enumerate(entries):
            if isinstance(entry, tuple):
                name, tensor = entry
            else:
                name, tensor = f"group{g_idx}.param{i}", entry
            tensors.append(tensor)
            names.append(str(name))
        given_names = group.get("param_names")
        if given_names is not None:
            names = list(given_names)
        group["params"] = tensors
        group["param_names"] = names
        out.append(group)
    return out


class ScaledAdam(Optimizer):
    """Adam whose step for each tensor is scaled by that tensor's RMS, with learnt tensor scales.

    Args:
        params: parameters, ``model.named_parameters()``, or a list of group dicts (``params`` or
            ``named_params`` plus per-group options). Names are used only in warnings.
        lr: relative learning rate (the Zipformer recipes use base_lr 0.035-0.045 with Eden).
        clipping_scale: if not None, the whole group's RMS-scaled gradient norm is clipped to
            ``clipping_scale`` times the median norm over the last ``clipping_update_period`` steps.
        betas: (beta1, beta2): momentum and second-moment decay constants.
        scalar_lr_scale: factor on ``lr`` for scalar parameters and for the learnt per-tensor scales.
        eps: added to the square root of the second moment.
        param_min_rms: the scale is never shrunk below this RMS, and updates use at least this RMS.
        param_max_rms: the scale update keeps (and pulls back) the RMS to at most this value.
        scalar_max: scalar parameters are clamped to ``[-scalar_max, scalar_max]``.
        size_update_period: the scale is updated every this many steps (from accumulated scale gradients).
        clipping_update_period: number of recent norms the median (threshold) is computed over.

    Gradients may be fp16/bf16 (they are upcast); optimizer state is always float32. Parameters whose
    ``.grad`` is None are skipped (their state is untouched). Use with ``GradScaler``: ``scaler.step(opt)``
    unscales before calling :meth:`step`.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-2,
        clipping_scale: float | None = None,
        betas: tuple[float, float] = (0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1.0e-8,
        param_min_rms: float = 1.0e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"ScaledAdam: lr={lr}, expected >= 0")
        if not 0.0 <= betas[0] <= betas[1] < 1.0:
            raise ValueError(f"ScaledAdam: betas={betas}, expected 0 <= beta1 <= beta2 < 1")
        if clipping_scale is not None and clipping_scale <= 0:
            raise ValueError(f"ScaledAdam: clipping_scale={clipping_scale}, expected None or > 0")
        if not 0 < param_min_rms < param_max_rms:
            raise ValueError(
                f"ScaledAdam: param_min_rms={param_min_rms}, param_max_rms={param_max_rms}, "
                "expected 0 < min < max"
            )
        if size_update_period < 1 or clipping_update_period < 1:
            raise ValueError(
                f"ScaledAdam: size_update_period={size_update_period}, "
                f"clipping_update_period={clipping_update_period}, expected >= 1"
            )
        defaults = {
            "lr": lr,
            "clipping_scale": clipping_scale,
            "betas": tuple(betas),
            "scalar_lr_scale": scalar_lr_scale,
            "eps": eps,
            "param_min_rms": param_min_rms,
            "param_max_rms": param_max_rms,
            "scalar_max": scalar_max,
            "size_update_period": size_update_period,
            "clipping_update_period": clipping_update_period,
        }
        super().__init__(_normalise_param_groups(params), defaults)
        # Per-group clipping bookkeeping, kept outside param state so groups without any grad still work.
        self._clip: list[dict[str, Any]] = [self._new_clip_state() for _ in self.param_groups]
        # Clipping factor applied in the last step, one per group (1.0 = not clipped); for logging/tests.
        self.last_clip_factors: list[float] = [1.0 for _ in self.param_groups]

    @staticmethod
    def _new_clip_state() -> dict[str, Any]:
        return {"step": 0, "norms": [], "threshold": None, "num_clipped": 0}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "param_names" not in param_group and "named_params" not in param_group:
            param_group = _normalise_param_groups([param_group])[0]
            n = len(self.param_groups)
            param_group["param_names"] = [f"group{n}.param{i}" for i in range(len(param_group["params"]))]
        elif "named_params" in param_group:
            param_group = _normalise_param_groups([param_group])[0]
        super().add_param_group(param_group)
        if hasattr(self, "_clip"):
            self._clip.append(self._new_clip_state())
            self.last_clip_factors.append(1.0)

    # ------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        """Torch's optimizer state dict plus ``clipping``: per-group step count, recent norms, threshold."""
        sd = super().state_dict()
        sd["clipping"] = copy.deepcopy(self._clip)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        clip = state_dict.pop("clipping", None)
        super().load_state_dict(state_dict)
        if clip is not None and len(clip) == len(self.param_groups):
            self._clip = copy.deepcopy(list(clip))
        else:
            self._clip = [self._new_clip_state() for _ in self.param_groups]
        self.last_clip_factors = [1.0 for _ in self.param_groups]
        # torch casts floating state to the param dtype on load; our state is float32 by design.
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                for k, v in st.items():
                    if isinstance(v, Tensor) and v.is_floating_point() and v.dtype != torch.float32:
                        st[k] = v.float()

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None):
        """Update all parameters that have a ``.grad``; returns the closure's loss if one was given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g_idx, group in enumerate(self.param_groups):
            names = group.get("param_names") or [f"param{i}" for i in range(len(group["params"]))]
            live = [(n, p) for n, p in zip(names, group["params"]) if p.grad is not None]
            if not live:
                continue
            for p in (p for _, p in live):
                if p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                if len(self.state[p]) == 0:
                    self._init_state(group, p)
            factor = self._clipping_factor(g_idx, group, live)
            self.last_clip_factors[g_idx] = factor
            for _, p in live:
                self._update_param(group, p, factor)
        return loss

    def _init_state(self, group: dict[str, Any], p: Tensor) -> None:
        state = self.state[p]
        state["step"] = 0
        # 'delta' is the momentum-smoothed parameter change; it carries both the Adam and the scale update.
        state["delta"] = torch.zeros(p.shape, device=p.device, dtype=torch.float32)
        state["exp_avg_sq"] = torch.zeros(p.shape, device=p.device, dtype=torch.float32)
        if p.numel() > 1:
            state["param_rms"] = p.detach().float().pow(2).mean().sqrt().reshape(1)
            state["scale_exp_avg_sq"] = torch.zeros(1, device=p.device, dtype=torch.float32)
            state["scale_grads"] = torch.zeros(
                group["size_update_period"], device=p.device, dtype=torch.float32
            )

    def _clipping_factor(self, g_idx: int, group: dict[str, Any], live: list[tuple[str, Tensor]]) -> float:
        """Return the factor (<= 1) the group's gradients are multiplied by, updating the norm history.

        The norm is taken of grads multiplied by each tensor's RMS (scalars: by ``scalar_lr_scale``)
        because that is what sets the size of the actual update.
        """
        clip = self._clip[g_idx]
        clipping_scale = group["clipping_scale"]
        step = clip["step"]
        clip["step"] = step + 1
        if clipping_scale is None:
            return 1.0
        sumsq = self._weighted_sumsqs(group, live)
        tot_sumsq = torch.stack(sumsq).sum()
        tot_norm = float(tot_sumsq.sqrt())  # one host sync per step, needed to decide on clipping
        finite = math.isfinite(tot_norm)
        if not finite:
            bad = [n for n, p in live if not bool(torch.isfinite(p.grad).all())]
            logger.warning(f"ScaledAdam: non-finite gradients in {bad}; zeroing this step's gradients")
        if step == 0:
            return 1.0 if finite else self._zero_grads(live)

        period = group["clipping_update_period"]
        clip["norms"].append(tot_norm if finite else math.inf)
        if len(clip["norms"]) > period:
            del clip["norms"][: len(clip["norms"]) - period]
        early = step in _EARLY_ESTIMATE_STEPS and step < period
        if step % period == 0 or early:
            norms = sorted(clip["norms"])
            quartiles = [norms[min(len(norms) - 1, (len(norms) // 4) * i)] for i in range(5)]
            median = quartiles[2]
            if not math.isfinite(median):
                raise RuntimeError(
                    f"ScaledAdam: median gradient norm is {median} over the last {len(norms)} steps; "
                    "too many gradients were not finite"
                )
            # Early estimates come while the norm still moves fast: be more lenient.
            threshold = clipping_scale * median * (2.0 if early else 1.0)
            pct = 100.0 * clip["num_clipped"] / len(norms)
            clip["threshold"] = threshold
            clip["num_clipped"] = 0
            logger.info(
                f"ScaledAdam: clipping_scale={clipping_scale}, grad-norm quartiles "
                f"{' '.join(f'{q:.3e}' for q in quartiles)}, threshold={threshold:.3e}, "
                f"percent-clipped={pct:.1f}"
            )
        if not finite:
            return self._zero_grads(live)
        threshold = clip["threshold"]
        if threshold is None:
            return 1.0
        factor = min(1.0, threshold / (tot_norm + 1.0e-20))
        if factor < 1.0:
            clip["num_clipped"] += 1
        if factor < 0.1:
            shares = [float(s) / (tot_norm**2 + 1e-20) for s in sumsq]
            worst = max(range(len(live)), key=lambda i: shares[i])
            logger.warning(
                f"ScaledAdam: scaling gradients by {factor:.3e} (threshold={threshold:.3e}); "
                f"dominant parameter {live[worst][0]} has {shares[worst]:.2f} of the squared norm"
            )
        return factor

    @staticmethod
    def _zero_grads(live: list[tuple[str, Tensor]]) -> float:
        for _, p in live:
            p.grad.zero_()
        return 0.0

    def _weighted_sumsqs(self, group: dict[str, Any], live: list[tuple[str, Tensor]]) -> list[Tensor]:
        out = []
        device = live[0][1].device
        for _, p in live:
            g = p.grad.float()
            if p.numel() == 1:
                s = (g.pow(2).sum()) * group["scalar_lr_scale"] ** 2
            else:
                s = g.pow(2).sum() * self.state[p]["param_rms"].pow(2).sum()
            out.append(s.to(device))
        return out

    def _update_param(self, group: dict[str, Any], p: Tensor, factor: float) -> None:
        state = self.state[p]
        grad = p.grad.float()
        if factor != 1.0:
            grad = grad * factor
        beta1 = group["betas"][0]
        step = state["step"]
        delta = state["delta"]
        delta.mul_(beta1)
        if p.numel() > 1:
            period = group["size_update_period"]
            pf = p.detach().float()
            state["scale_grads"][step % period] = (pf * grad).sum()
            if step % period == period - 1:
                state["param_rms"].copy_(pf.pow(2).mean().sqrt())
                if step > 0:
                    self._update_scale(group, pf, state)
            self._adam_step(group, grad, state)
            p.add_(delta.to(p.dtype))
        else:
            self._scalar_step(group, grad, state)
            p.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
            p.add_(delta.to(p.dtype))
        state["step"] = step + 1

    @staticmethod
    def _update_scale(group: dict[str, Any], pf: Tensor, state: dict[str, Any]) -> None:
        """Adam on the tensor's log-scale, from the scale gradients sum(p * grad) of the last period.

        The step is written into ``delta`` (times 1 - beta1, as momentum sums it back up to about 1x).
        """
        beta1, beta2 = group["betas"]
        scale_grads = state["scale_grads"]
        period = scale_grads.numel()
        # One scale update per period, so the second-moment decay is beta2 per *step*.
        beta2_period = beta2**period
        ema = state["scale_exp_avg_sq"]
        ema.mul_(beta2_period).add_(scale_grads.pow(2).mean(), alpha=1 - beta2_period)
        n_updates = (state["step"] + 1) // period
        bias_corr2 = 1 - beta2_period**n_updates
        denom = ema.sqrt() + group["eps"]
        size_lr = group["lr"] * group["scalar_lr_scale"]
        scale_step = -size_lr * math.sqrt(bias_corr2) * scale_grads.sum() / denom
        rms = state["param_rms"]
        # Do not shrink a tensor that is already at its minimum size ...
        scale_step = scale_step.masked_fill(rms < group["param_min_rms"], 0.0)
        # ... and never grow it beyond param_max_rms (this also pulls back one that got larger).
        scale_step = torch.minimum(scale_step, (group["param_max_rms"] - rms) / rms)
        state["delta"].add_(pf * scale_step, alpha=1 - beta1)

    @staticmethod
    def _adam_step(group: dict[str, Any], grad: Tensor, state: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_corr2 = 1 - beta2 ** (state["step"] + 1)
        # No beta1 bias correction: the slow start of the momentum helps stability early on.
        denom = exp_avg_sq.sqrt() if bias_corr2 >= 0.99 else (exp_avg_sq / bias_corr2).sqrt()
        denom.add_(group["eps"])
        rms = state["param_rms"].clamp(min=group["param_min_rms"])
        state["delta"].add_((grad / denom) * (rms * (-group["lr"] * (1 - beta1))))

    @staticmethod
    def _scalar_step(group: dict[str, Any], grad: Tensor, state: dict[str, Any]) -> None:
        """Plain Adam (lr times scalar_lr_scale) for one-element tensors, whose RMS says nothing."""
        beta1, beta2 = group["betas"]
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_corr2 = 1 - beta2 ** (state["step"] + 1)
        denom = (exp_avg_sq / bias_corr2).sqrt() + group["eps"]
        lr = group["lr"] * group["scalar_lr_scale"]
        state["delta"].add_(grad / denom, alpha=-lr * (1 - beta1))


class LRScheduler:
    """Base for schedules that depend on both the batch index and the epoch (which may be fractional).

    Sets ``lr`` of every param group of ``optimizer`` from its ``base_lr`` (taken from ``lr`` on creation).
    Call :meth:`step_batch` after every optimizer step and :meth:`step_epoch` at every epoch start.
    """

    def __init__(self, optimizer: Optimizer, verbose: bool = False) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
        self.optimizer = optimizer
        self.verbose = verbose
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs: list[float] = [group["base_lr"] for group in optimizer.param_groups]
        self.epoch: float = 0
        self.batch: int = 0
        self._last_lr: list[float] = [group["lr"] for group in optimizer.param_groups]

    def get_lr(self) -> list[float]:
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rate of each param group as last set."""
        return list(self._last_lr)

    def step_batch(self, batch: int | None = None) -> None:
        """Set the global batch index (counted over all epochs), or advance it by one if None."""
        self.batch = self.batch + 1 if batch is None else batch
        self._set_lrs()

    def step_epoch(self, epoch: float | None = None) -> None:
        """Set the (0-based) epoch, or advance it by one if None."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._set_lrs()

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lrs = list(state_dict["base_lrs"])
        self.epoch = state_dict["epoch"]
        self.batch = state_dict["batch"]
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["base_lr"] = base
        self._set_lrs()

    def _set_lrs(self) -> None:
        values = self.get_lr()
        if len(values) != len(self.optimizer.param_groups):
            raise RuntimeError(
                f"{type(self).__name__}: {len(values)} learning rates for "
                f"{len(self.optimizer.param_groups)} param groups"
            )
        for i, (group, lr) in enumerate(zip(self.optimizer.param_groups, values)):
            group["lr"] = lr
            if self.verbose:
                logger.info(f"epoch={self.epoch}, batch={self.batch}: lr of group {i} set to {lr:.4e}")
        self._last_lr = list(values)


class Eden(LRScheduler):
    """The Eden schedule (see module docstring); with ScaledAdam use base_lr around 0.045.

    Args:
        optimizer: optimizer whose group learning rates are set (``lr`` at creation becomes ``base_lr``).
        lr_batches: batches after which the rate starts falling noticeably (e.g. 7500).
        lr_epochs: epochs after which the rate starts falling noticeably (e.g. 3.5); may be any measure of
            data seen if ``step_epoch`` is given fractional values.
        warmup_batches: length of the linear warm-up in batches.
        warmup_start: warm-up factor at batch 0.

    The learning rates are set on creation (batch 0, epoch 0), so the first step already uses the schedule.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_batches: float,
        lr_epochs: float,
        warmup_batches: float = 500.0,
        warmup_start: float = 0.5,
        verbose: bool = False,
    ) -> None:
        super().__init__(optimizer, verbose)
        if lr_batches <= 0 or lr_epochs <= 0:
            raise ValueError(f"Eden: lr_batches={lr_batches}, lr_epochs={lr_epochs}, expected both > 0")
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"Eden: warmup_start={warmup_start}, expected within [0, 1]")
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start
        self._set_lrs()

    def lr_factor(self, batch: float, epoch: float) -> float:
        """The multiplier on base_lr at this (batch, epoch)."""
        batch_factor = ((batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25
        epoch_factor = ((epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        if batch >= self.warmup_batches:
            warmup = 1.0
        else:
            warmup = self.warmup_start + (1.0 - self.warmup_start) * batch / self.warmup_batches
        return batch_factor * epoch_factor * warmup

    def get_lr(self) -> list[float]:
        factor = self.lr_factor(self.batch, self.epoch)
        return [base * factor for base in self.base_lrs]
