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
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["Eden", "LRScheduler", "ScaledAdam"]

logger = logging.getLogger(__name__)

def _to_device(values: list, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small host list as a device tensor without waiting for the device (no stream sync)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


# Chunk length for per-tensor sums in the multi-tensor path.
_CHUNK = 1024

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


class _GroupLayout:
    """Per-group scratch for the multi-tensor path: per-tensor dot products in a handful of kernels.

    Holds one flat float32 buffer in which every non-scalar parameter of the group owns a run of whole
    ``_CHUNK``-element chunks (zero padded), and a view of it shaped like the parameter. ``dot`` writes
    p * grad into those views, sums every chunk in one kernel and the few chunk sums of each tensor with
    ``segment_reduce``. (``segment_reduce`` straight over the elements would walk each tensor with one
    thread.) Parameters without a gradient this step keep stale values in their runs; only live runs are
    read back.
    """

    def __init__(self, key: tuple, params: list[Tensor], device: torch.device) -> None:
        self.key = key
        self.device = device
        self.n = len(params)
        self.index = {id(p): i for i, p in enumerate(params)}
        n_chunks = [-(-p.numel() // _CHUNK) for p in params]
        self.buffer = torch.zeros(sum(n_chunks) * _CHUNK, device=device, dtype=torch.float32)
        self.views = []
        start = 0
        for p, c in zip(params, n_chunks):
            self.views.append(self.buffer[start : start + p.numel()].view(p.shape))
            start += c * _CHUNK
        self.chunk_counts = _to_device(n_chunks, device, torch.int64)
        self.inv_sqrt_numel = _to_device([1.0 / math.sqrt(p.numel()) for p in params], device, torch.float32)

    def dot(self, pos: list[int], a: list[Tensor], b: list[Tensor]) -> Tensor:
        """(len(pos),) tensor of sum(a[i] * b[i]), where a[i] has the shape of the group's param pos[i]."""
        live = len(pos) == self.n
        views = self.views if live else [self.views[i] for i in pos]
        torch._foreach_copy_(views, a)
        torch._foreach_mul_(views, b)
        chunk_sums = self.buffer.view(-1, _CHUNK).sum(dim=1)
        sums = torch.segment_reduce(chunk_sums, "sum", lengths=self.chunk_counts)
        return sums if live else sums.index_select(0, _to_device(pos, self.device, torch.int64))


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
        foreach: use multi-tensor kernels (one host sync and a few dozen launches per step); False
            updates one tensor at a time (the reference path; same results up to rounding).

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
        foreach: bool = True,
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
        self.foreach = foreach
        self._layouts: dict[int, _GroupLayout] = {}
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
            if self.foreach and len({p.device for _, p in live}) == 1:
                self._group_step_multi(g_idx, group, live)
            else:
                self._group_step_loop(g_idx, group, live)
        return loss

    def _group_step_loop(self, g_idx: int, group: dict[str, Any], live: list[tuple[str, Tensor]]) -> None:
        """Reference path: one parameter at a time (many small kernels; fine on CPU)."""
        sumsq = self._weighted_sumsqs(group, live)
        tot_sumsq = float(torch.stack([s.to(sumsq[0].device) for s in sumsq]).sum())  # host sync
        factor = self._clipping_factor(g_idx, group, live, tot_sumsq, lambda: [float(s) for s in sumsq])
        self.last_clip_factors[g_idx] = factor
        for _, p in live:
            self._update_param(group, p, factor)

    def _group_step_multi(self, g_idx: int, group: dict[str, Any], live: list[tuple[str, Tensor]]) -> None:
        """Same update as :meth:`_group_step_loop` with multi-tensor (``torch._foreach_*``) kernels.

        All per-tensor scalars the host needs (total norm, each tensor's RMS) come back in one transfer,
        so a step costs one host sync and a few dozen kernel launches instead of ~20 per tensor.
        """
        mats = [(n, p) for n, p in live if p.numel() > 1]
        scals = [(n, p) for n, p in live if p.numel() == 1]
        device = live[0][1].device
        beta1 = group["betas"][0]
        period = group["size_update_period"]
        sumsq_parts: list[Tensor] = []
        to_host: list[Tensor] = []
        if mats:
            params = [p for _, p in mats]
            layout = self._layout(g_idx, group, device)
            pos = [layout.index[id(p)] for p in params]
            all_live = len(pos) == layout.n
            states = [self.state[p] for p in params]
            steps = [st["step"] for st in states]
            grads = self._fp32_grads(params)
            pf = [p.detach() if p.dtype == torch.float32 else p.detach().float() for p in params]
            rms_list = [st["param_rms"] for st in states]
            # clipping uses the RMS as stored before this step (as the loop path does)
            grad_norms = torch.stack(torch._foreach_norm(grads))
            sumsq_parts.append((grad_norms * torch.cat(rms_list)).pow(2))
            # at the end of a size period the stored RMS is refreshed before the Adam step uses it
            refresh = [i for i, s in enumerate(steps) if s % period == period - 1]
            if refresh:
                norms = torch.stack(torch._foreach_norm([pf[i] for i in refresh]))
                if all_live and len(refresh) == layout.n:
                    inv_sqrt = layout.inv_sqrt_numel
                else:
                    inv_sqrt = _to_device(
                        [1.0 / math.sqrt(pf[i].numel()) for i in refresh], device, torch.float32
                    )
                new_rms = (norms * inv_sqrt).unsqueeze(1)
                torch._foreach_copy_([rms_list[i] for i in refresh], list(new_rms.unbind(0)))
            rms_now = torch.cat(rms_list)
            to_host.append(rms_now)
        if scals:
            scal_grads = torch.stack([p.grad.detach().reshape(()).float() for _, p in scals])
            sumsq_parts.append(scal_grads.pow(2) * group["scalar_lr_scale"] ** 2)
        per_param_sumsq = torch.cat(sumsq_parts)
        host = torch.cat([per_param_sumsq.sum().reshape(1), *to_host]).tolist()  # the one host sync
        factor = self._clipping_factor(
            g_idx, group, mats + scals, host[0], lambda: per_param_sumsq.tolist()
        )
        self.last_clip_factors[g_idx] = factor

        if mats:
            rms_host = host[1:]
            if factor == 0.0:
                grads = self._fp32_grads(params)  # p.grad were zeroed in place
            elif factor != 1.0:
                grads = torch._foreach_mul(grads, factor)
            deltas = [st["delta"] for st in states]
            torch._foreach_mul_(deltas, beta1)
            self._multi_scale_update(group, layout, pos, states, steps, pf, grads, deltas, refresh, rms_host)
            self._multi_adam_step(group, states, steps, grads, deltas, rms_host)
            if all(p.dtype == torch.float32 for p in params):
                torch._foreach_add_(params, deltas)
            else:
                for p, d in zip(params, deltas):
                    p.add_(d.to(p.dtype))
            for st in states:
                st["step"] += 1
        if scals:
            self._multi_scalar_step(group, [p for _, p in scals], factor)

    def _multi_scalar_step(self, group: dict[str, Any], params: list[Tensor], factor: float) -> None:
        """:meth:`_scalar_step` (plus clamping and the parameter update) for all one-element tensors."""
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        grads = [p.grad.float() if p.grad.dtype != torch.float32 else p.grad for p in params]
        if factor != 1.0:
            grads = torch._foreach_mul(grads, factor)
        deltas = [st["delta"] for st in states]
        sq = [st["exp_avg_sq"] for st in states]
        torch._foreach_mul_(deltas, beta1)
        torch._foreach_mul_(sq, beta2)
        torch._foreach_addcmul_(sq, grads, grads, value=1 - beta2)
        denom = torch._foreach_div(sq, [1 - beta2 ** (st["step"] + 1) for st in states])
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(grads, denom)
        torch._foreach_mul_(update, -group["lr"] * group["scalar_lr_scale"] * (1 - beta1))
        torch._foreach_add_(deltas, update)
        limit = group["scalar_max"]
        if all(p.dtype == torch.float32 for p in params):
            torch._foreach_clamp_min_(params, -limit)
            torch._foreach_clamp_max_(params, limit)
            torch._foreach_add_(params, deltas)
        else:
            for p, d in zip(params, deltas):
                p.clamp_(min=-limit, max=limit)
                p.add_(d.to(p.dtype))
        for st in states:
            st["step"] += 1

    @staticmethod
    def _fp32_grads(params: list[Tensor]) -> list[Tensor]:
        return [p.grad if p.grad.dtype == torch.float32 else p.grad.float() for p in params]

    def _layout(self, g_idx: int, group: dict[str, Any], device: torch.device) -> _GroupLayout:
        """The group's cached :class:`_GroupLayout` (rebuilt if its parameters or device changed)."""
        mats = [p for p in group["params"] if p.numel() > 1]
        key = (device, tuple(id(p) for p in mats))
        layout = self._layouts.get(g_idx)
        if layout is None or layout.key != key:
            layout = _GroupLayout(key, mats, device)
            self._layouts[g_idx] = layout
        return layout

    def _multi_scale_update(
        self,
        group: dict[str, Any],
        layout: _GroupLayout,
        pos: list[int],
        states: list[dict[str, Any]],
        steps: list[int],
        pf: list[Tensor],
        grads: list[Tensor],
        deltas: list[Tensor],
        refresh: list[int],
        rms_host: list[float],
    ) -> None:
        """Record this step's scale gradients sum(p * grad); at period ends, update the tensors' scales
        (as :meth:`_update_scale` does) for all of them at once."""
        period = group["size_update_period"]
        beta1, beta2 = group["betas"]
        n = len(states)
        device = layout.device
        scale_grad_now = layout.dot(pos, pf, grads)
        sg_list = [st["scale_grads"] for st in states]
        sg = torch.stack(sg_list)  # (n, period)
        slots = [s % period for s in steps]
        if all(k == slots[0] for k in slots):
            sg[:, slots[0]] = scale_grad_now
        else:
            rows = torch.arange(n, device=device)
            sg[rows, _to_device(slots, device, torch.int64)] = scale_grad_now
        torch._foreach_copy_(sg_list, list(sg.unbind(0)))

        upd = [i for i in refresh if steps[i] > 0]
        if not upd:
            return
        sg_u = sg if len(upd) == n else sg.index_select(0, _to_device(upd, device, torch.int64))
        ema_list = [states[i]["scale_exp_avg_sq"] for i in upd]
        beta2_period = beta2**period
        ema = torch.cat(ema_list) * beta2_period + sg_u.pow(2).mean(dim=1) * (1 - beta2_period)
        torch._foreach_copy_(ema_list, list(ema.unsqueeze(1).unbind(0)))
        rms = [rms_host[i] for i in upd]
        # per-tensor factors: sqrt(bias correction), and the step limits from param_min_rms / param_max_rms
        host = [
            [math.sqrt(1 - beta2_period ** ((steps[i] + 1) // period)) for i in upd],
            [0.0 if r < group["param_min_rms"] else 1.0 for r in rms],
            [(group["param_max_rms"] - r) / r if r > 0 else math.inf for r in rms],
        ]
        bias, keep, limit = _to_device(host, device, torch.float32).unbind(0)
        size_lr = group["lr"] * group["scalar_lr_scale"]
        scale_step = -size_lr * bias * sg_u.sum(dim=1) / (ema.sqrt() + group["eps"])
        scale_step = torch.minimum(scale_step * keep, limit)
        coefs = (scale_step * (1 - beta1)).tolist()  # second host sync, only every size_update_period steps
        torch._foreach_add_([deltas[i] for i in upd], torch._foreach_mul([pf[i] for i in upd], coefs))

    @staticmethod
    def _multi_adam_step(
        group: dict[str, Any],
        states: list[dict[str, Any]],
        steps: list[int],
        grads: list[Tensor],
        deltas: list[Tensor],
        rms_host: list[float],
    ) -> None:
        beta1, beta2 = group["betas"]
        sq = [st["exp_avg_sq"] for st in states]
        torch._foreach_mul_(sq, beta2)
        torch._foreach_addcmul_(sq, grads, grads, value=1 - beta2)
        corr = [1 - beta2 ** (s + 1) for s in steps]
        if any(c < 0.99 for c in corr):
            denom = torch._foreach_div(sq, [c if c < 0.99 else 1.0 for c in corr])
            torch._foreach_sqrt_(denom)
        else:
            denom = torch._foreach_sqrt(sq)
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(grads, denom)
        lr, min_rms = group["lr"], group["param_min_rms"]
        torch._foreach_mul_(update, [-lr * (1 - beta1) * max(r, min_rms) for r in rms_host])
        torch._foreach_add_(deltas, update)

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

    def _clipping_factor(
        self,
        g_idx: int,
        group: dict[str, Any],
        live: list[tuple[str, Tensor]],
        tot_sumsq: float,
        per_param_sumsq: Callable[[], list[float]],
    ) -> float:
        """Return the factor (<= 1) the group's gradients are multiplied by, updating the norm history.

        ``tot_sumsq`` is the squared norm of the grads multiplied by each tensor's RMS (scalars: by
        ``scalar_lr_scale``), because that is what sets the size of the actual update;
        ``per_param_sumsq`` gives its parts (in ``live`` order) for the dominant-parameter warning.
        Non-finite gradients are zeroed in place (factor 0).
        """
        clip = self._clip[g_idx]
        clipping_scale = group["clipping_scale"]
        step = clip["step"]
        clip["step"] = step + 1
        tot_norm = math.sqrt(tot_sumsq) if tot_sumsq >= 0 else math.nan
        finite = math.isfinite(tot_norm)
        if not finite:
            # checked even without clipping: one inf/nan would otherwise poison the parameters for good
            bad = [n for n, p in live if not bool(torch.isfinite(p.grad).all())]
            logger.warning(f"ScaledAdam: non-finite gradients in {bad}; zeroing this step's gradients")
        if clipping_scale is None or step == 0:
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
            shares = [s / (tot_sumsq + 1e-20) for s in per_param_sumsq()]
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
        # extra multiplier on top of the schedule: the training loop's cool-down at the end of a fixed budget
        self.budget_factor: float = 1.0
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

    def set_budget_factor(self, factor: float) -> None:
        """Multiply every rate by ``factor`` in [0, 1] on top of the schedule (a linear decay over the last
        part of a run whose length is fixed in batches or minutes: warm-up, stable, decay)."""
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"budget factor {factor} outside [0, 1]")
        self.budget_factor = factor
        self._set_lrs()

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "epoch": self.epoch, "batch": self.batch,
                "budget_factor": self.budget_factor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lrs = list(state_dict["base_lrs"])
        self.epoch = state_dict["epoch"]
        self.batch = state_dict["batch"]
        self.budget_factor = state_dict.get("budget_factor", 1.0)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["base_lr"] = base
        self._set_lrs()

    def _set_lrs(self) -> None:
        values = [v * self.budget_factor for v in self.get_lr()]
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
