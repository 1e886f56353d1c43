"""Tests for anyphone.optim: ScaledAdam and Eden."""

import copy
import io
import logging
import math

import pytest
import torch

from anyphone.optim import Eden, ScaledAdam


def _mlp_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 16, generator=g)
    w = torch.randn(16, 4, generator=g)
    y = torch.tanh(x @ w) + 0.01 * torch.randn(256, 4, generator=g)
    return x, y


def _make_mlp() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))


def _train(model, opt, x, y, steps: int) -> float:
    for _ in range(steps):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((model(x) - y) ** 2).mean().item()


def _roundtrip(obj):
    """Serialise through torch.save / torch.load(weights_only=True), as checkpoints do."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_mlp_converges_at_least_as_well_as_adam():
    torch.set_num_threads(1)
    x, y = _mlp_problem()
    start = ((_make_mlp()(x) - y) ** 2).mean().item()
    model = _make_mlp()
    sa_loss = _train(model, ScaledAdam(model.named_parameters(), lr=0.05, clipping_scale=2.0), x, y, 300)
    adam_losses = []
    for lr in (1e-3, 3e-3, 1e-2):
        model = _make_mlp()
        adam_losses.append(_train(model, torch.optim.Adam(model.parameters(), lr=lr), x, y, 300))
    assert sa_loss < start / 100
    assert sa_loss <= 2.0 * min(adam_losses), (sa_loss, adam_losses)


def test_least_squares_converges():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(64, 8, generator=g)
    w_true = torch.randn(8, 1, generator=g)
    b = a @ w_true
    w = torch.nn.Parameter(0.1 * torch.randn(8, 1, generator=g))
    opt = ScaledAdam([w], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        ((a @ w - b) ** 2).mean().backward()
        opt.step()
    assert torch.allclose(w.detach(), w_true, atol=0.05), (w.flatten(), w_true.flatten())


def test_first_step_is_relative_to_param_rms():
    # Step 0: exp_avg_sq is bias-corrected to grad^2, so the update is -lr*(1-beta1)*rms*sign(grad).
    for scale in (0.01, 1.0, 10.0):
        torch.manual_seed(0)
        p = torch.nn.Parameter(scale * torch.randn(5, 7))
        rms = p.detach().pow(2).mean().sqrt()
        opt = ScaledAdam([p], lr=0.03, betas=(0.9, 0.98))
        grad = torch.randn(5, 7)
        p.grad = grad.clone()
        before = p.detach().clone()
        opt.step()
        expected = -0.03 * 0.1 * rms * torch.sign(grad)
        assert torch.allclose(p.detach() - before, expected, rtol=1e-4, atol=1e-9)


def test_zero_param_still_moves_by_min_rms():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    opt = ScaledAdam([p], lr=0.03, param_min_rms=1e-2)
    p.grad = torch.randn(4, 4)
    opt.step()
    assert torch.allclose(p.detach().abs(), torch.full((4, 4), 0.03 * 0.1 * 1e-2), rtol=1e-4)


def _grow_rms(param_max_rms: float, steps: int = 400) -> float:
    torch.manual_seed(0)
    p = torch.nn.Parameter(0.5 * torch.randn(16, 16))
    opt = ScaledAdam([p], lr=0.02, param_max_rms=param_max_rms)
    for _ in range(steps):
        opt.zero_grad()
        (-(p**2).sum()).backward()  # wants the parameter as large as possible
        opt.step()
    return p.detach().pow(2).mean().sqrt().item()


def test_param_max_rms_bounds_growth():
    bounded = _grow_rms(param_max_rms=1.0)
    unbounded = _grow_rms(param_max_rms=1e6)
    assert bounded <= 1.15, bounded
    assert unbounded > 3.0, unbounded


def test_clipping_kicks_in_on_outlier_gradient():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = ScaledAdam([("w", p)], lr=0.03, clipping_scale=2.0, betas=(0.9, 0.98))
    for _ in range(60):
        p.grad = torch.randn(8, 8) * 1e-3
        opt.step()
        assert opt.last_clip_factors[0] == 1.0 or opt.last_clip_factors[0] > 0.3
    threshold = opt._clip[0]["threshold"]
    assert threshold is not None and threshold > 0
    rms = opt.state[p]["param_rms"].item()
    sq_before = opt.state[p]["exp_avg_sq"].clone()
    p.grad = torch.randn(8, 8)  # about 1000x the usual norm
    opt.step()
    factor = opt.last_clip_factors[0]
    assert factor < 0.01
    # The gradient that entered the second moment has norm * rms equal to the threshold.
    added = (opt.state[p]["exp_avg_sq"] - 0.98 * sq_before) / (1 - 0.98)
    assert math.isclose(added.sum().sqrt().item() * rms, threshold, rel_tol=1e-3)


def test_no_clipping_when_disabled():
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = ScaledAdam([p], lr=0.03, clipping_scale=None)
    for i in range(30):
        p.grad = torch.randn(8, 8) * (1000.0 if i == 25 else 1e-3)
        opt.step()
        assert opt.last_clip_factors[0] == 1.0


def test_params_without_grad_are_skipped():
    a = torch.nn.Parameter(torch.randn(3, 3))
    b = torch.nn.Parameter(torch.randn(3, 3))
    opt = ScaledAdam([("a", a), ("b", b)], lr=0.03, clipping_scale=2.0)
    b_before = b.detach().clone()
    for _ in range(5):
        a.grad = torch.randn(3, 3)
        opt.step()
    assert torch.equal(b.detach(), b_before)
    assert len(opt.state[b]) == 0
    assert opt.state[a]["step"] == 5


def test_nonfinite_grad_warning_names_param(caplog):
    w = torch.nn.Parameter(torch.randn(4, 4))
    bias = torch.nn.Parameter(torch.randn(4))
    opt = ScaledAdam([("enc.weight", w), ("enc.bias", bias)], lr=0.03, clipping_scale=2.0)
    for _ in range(3):
        w.grad, bias.grad = torch.randn(4, 4), torch.randn(4)
        opt.step()
    w.grad = torch.randn(4, 4)
    w.grad[0, 0] = float("inf")
    bias.grad = torch.randn(4)
    with caplog.at_level(logging.WARNING, logger="anyphone.optim"):
        opt.step()
    assert "enc.weight" in caplog.text and "enc.bias" not in caplog.text
    assert opt.last_clip_factors[0] == 0.0
    assert torch.isfinite(w).all() and torch.isfinite(bias).all()


def test_bf16_grads_and_params():
    p = torch.nn.Parameter(torch.randn(6, 6).to(torch.bfloat16))
    s = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.bfloat16))
    opt = ScaledAdam([p, s], lr=0.03, clipping_scale=2.0)
    for _ in range(12):
        opt.zero_grad()
        ((p.float() ** 2).sum() + s.float() ** 2).backward()
        assert p.grad.dtype == torch.bfloat16
        opt.step()
    assert opt.state[p]["exp_avg_sq"].dtype == torch.float32
    assert p.dtype == torch.bfloat16 and torch.isfinite(p.float()).all()


def test_grad_scaler_unscales_before_step():
    x, y = _mlp_problem()
    results = []
    for use_scaler in (False, True):
        model = _make_mlp()
        opt = ScaledAdam(model.named_parameters(), lr=0.05, clipping_scale=2.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=use_scaler)
        for _ in range(20):
            opt.zero_grad()
            scaler.scale(((model(x) - y) ** 2).mean()).backward()
            scaler.step(opt)
            scaler.update()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


def test_state_dict_roundtrip_gives_identical_updates():
    x, y = _mlp_problem()
    model_a = _make_mlp()
    opt_a = ScaledAdam(model_a.named_parameters(), lr=0.05, clipping_scale=2.0, size_update_period=3)
    sched_a = Eden(opt_a, lr_batches=10, lr_epochs=2, warmup_batches=5)
    for i in range(25):  # past the first clipping estimates (steps 10, 20)
        opt_a.zero_grad()
        ((model_a(x) - y) ** 2).mean().backward()
        opt_a.step()
        sched_a.step_batch()
    saved_model = _roundtrip(copy.deepcopy(model_a.state_dict()))
    saved_opt = _roundtrip(opt_a.state_dict())
    saved_sched = _roundtrip(sched_a.state_dict())

    model_b = _make_mlp()
    model_b.load_state_dict(saved_model)
    opt_b = ScaledAdam(model_b.named_parameters(), lr=0.05, clipping_scale=2.0, size_update_period=3)
    sched_b = Eden(opt_b, lr_batches=10, lr_epochs=2, warmup_batches=5)
    opt_b.load_state_dict(saved_opt)
    sched_b.load_state_dict(saved_sched)
    assert sched_b.get_last_lr() == sched_a.get_last_lr()
    for model, opt, sched in ((model_a, opt_a, sched_a), (model_b, opt_b, sched_b)):
        for _ in range(15):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            sched.step_batch()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    assert opt_a._clip == opt_b._clip


def test_param_groups_with_names_and_options():
    model = _make_mlp()
    groups = [
        {"named_params": list(model[0].named_parameters(prefix="0")), "lr": 0.01},
        {"params": list(model[2].named_parameters(prefix="2"))},
    ]
    opt = ScaledAdam(groups, lr=0.05)
    assert opt.param_groups[0]["param_names"] == ["0.weight", "0.bias"]
    assert opt.param_groups[1]["param_names"] == ["2.weight", "2.bias"]
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[1]["lr"] == 0.05
    with pytest.raises(ValueError, match="empty parameter list"):
        ScaledAdam([], lr=0.05)


# ------------------------------------------------------------------ Eden
def _eden_formula(base, batch, epoch, lr_batches, lr_epochs, warmup_batches, warmup_start=0.5):
    f = ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25
    f *= ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
    w = 1.0 if batch >= warmup_batches else warmup_start + (1 - warmup_start) * batch / warmup_batches
    return base * f * w


def test_eden_matches_formula():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = ScaledAdam([p], lr=0.045)
    sched = Eden(opt, lr_batches=7500, lr_epochs=3.5, warmup_batches=500)
    assert math.isclose(opt.param_groups[0]["lr"], 0.045 * 0.5)  # set on creation: batch 0, epoch 0
    for batch, epoch in [(0, 0), (250, 0), (500, 0), (1000, 1), (7500, 3.5), (20000, 10), (123456, 30.5)]:
        sched.step_epoch(epoch)
        sched.step_batch(batch)
        expected = _eden_formula(0.045, batch, epoch, 7500, 3.5, 500)
        assert math.isclose(opt.param_groups[0]["lr"], expected, rel_tol=1e-12)
        assert sched.get_last_lr() == [opt.param_groups[0]["lr"]]
    # hand values: at batch == lr_batches and epoch == lr_epochs each factor is 2**-0.25
    sched.step_epoch(3.5)
    sched.step_batch(7500)
    assert math.isclose(opt.param_groups[0]["lr"], 0.045 * 2**-0.5, rel_tol=1e-12)


def test_eden_warmup_is_linear_from_half():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = ScaledAdam([p], lr=1.0)
    sched = Eden(opt, lr_batches=1e12, lr_epochs=1e12, warmup_batches=100)
    seen = []
    for b in range(0, 201, 25):
        sched.step_batch(b)
        seen.append(opt.param_groups[0]["lr"])
    expected = [0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert all(math.isclose(a, e, rel_tol=1e-9) for a, e in zip(seen, expected)), seen


def test_eden_step_without_argument_and_state_dict():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = ScaledAdam([{"params": [p], "lr": 0.02}], lr=0.05)
    sched = Eden(opt, lr_batches=100, lr_epochs=2, warmup_batches=10)
    for _ in range(7):
        sched.step_batch()
    sched.step_epoch()
    assert (sched.batch, sched.epoch) == (7, 1)
    state = _roundtrip(sched.state_dict())
    opt2 = ScaledAdam([{"params": [torch.nn.Parameter(torch.zeros(2, 2))], "lr": 0.02}], lr=0.05)
    sched2 = Eden(opt2, lr_batches=100, lr_epochs=2, warmup_batches=10)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert math.isclose(opt.param_groups[0]["lr"], _eden_formula(0.02, 7, 1, 100, 2, 10))


def test_eden_budget_factor_scales_the_schedule_and_survives_a_state_dict():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = ScaledAdam([p], lr=0.04)
    sched = Eden(opt, lr_batches=100, lr_epochs=2, warmup_batches=10)
    sched.step_batch(50)
    plain = opt.param_groups[0]["lr"]
    sched.set_budget_factor(0.25)
    assert math.isclose(opt.param_groups[0]["lr"], 0.25 * plain, rel_tol=1e-12)
    sched.step_batch(60)  # the factor stays until the loop sets another
    assert math.isclose(opt.param_groups[0]["lr"], 0.25 * _eden_formula(0.04, 60, 0, 100, 2, 10), rel_tol=1e-12)
    opt2 = ScaledAdam([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.04)
    sched2 = Eden(opt2, lr_batches=100, lr_epochs=2, warmup_batches=10)
    sched2.load_state_dict(_roundtrip(sched.state_dict()))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    with pytest.raises(ValueError, match="outside"):
        sched.set_budget_factor(1.5)


def test_multi_tensor_path_matches_per_tensor_path():
    """The foreach path (default) and the one-tensor-at-a-time path give the same updates."""

    def run(foreach: bool):
        torch.manual_seed(0)
        shapes = [(6, 5), (5,), (3, 4, 2), (), (1,), (7, 3)]
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        params.append(torch.nn.Parameter(torch.randn(4, 4).to(torch.bfloat16)))
        opt = ScaledAdam(
            [(f"p{i}", p) for i, p in enumerate(params)], lr=0.05, clipping_scale=2.0,
            size_update_period=3, clipping_update_period=20, foreach=foreach,
        )
        g = torch.Generator().manual_seed(1)
        factors = []
        for step in range(70):
            for i, p in enumerate(params):
                # p2 skips every third step so its step count (and size-update phase) drifts from the rest
                if i == 2 and step % 3 == 0:
                    p.grad = None
                    continue
                scale = 50.0 if step in (33, 34) else 1.0  # outliers that get clipped
                p.grad = (torch.randn(p.shape, generator=g) * scale - 0.3 * p.detach().float()).to(p.dtype)
            if step == 45:
                params[0].grad[1, 1] = float("nan")
            opt.step()
            factors.append(opt.last_clip_factors[0])
        return [p.detach().float().clone() for p in params], factors, opt

    (ref, ref_f, ref_opt), (got, got_f, got_opt) = run(False), run(True)
    assert any(f < 1.0 for f in ref_f) and ref_f[45] == 0.0
    assert got_f == pytest.approx(ref_f, rel=1e-4)
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
    for pa, pb in zip(ref_opt.param_groups[0]["params"], got_opt.param_groups[0]["params"]):
        sa, sb = ref_opt.state[pa], got_opt.state[pb]
        assert sa["step"] == sb["step"]
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                assert torch.allclose(sa[k], sb[k], rtol=1e-4, atol=1e-6), k
