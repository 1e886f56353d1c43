"""Zipformer building blocks, training behaviour and presets (no reference fixtures needed)."""

from __future__ import annotations

import argparse
import math
import random

import pytest
import torch
from torch import nn

from anyphone.models.ctc import CtcModel, build_encoder, count_parameters
from anyphone.models.presets import (
    ZipformerConfig,
    add_model_arguments,
    config_from_args,
    get_preset,
)
from anyphone.models.scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    BiasNorm,
    Dropout3,
    ScaleGrad,
    ScheduledFloat,
    Whiten,
    limit_param_value,
    penalize_abs_values_gt,
    set_batch_count,
    swoosh_l,
    swoosh_r,
)
from anyphone.models.zipformer import CompactRelPositionalEncoding, SimpleDownsample, make_pad_mask


def _ref_swoosh(x: torch.Tensor, shift: float, offset: float) -> torch.Tensor:
    x = x.double()
    return torch.nn.functional.softplus(x - shift) - 0.08 * x - offset


def test_swoosh_values_and_grads():
    x = torch.linspace(-30, 120, 2001)
    torch.testing.assert_close(swoosh_l(x).double(), _ref_swoosh(x, 4.0, 0.035), atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(swoosh_r(x).double(), _ref_swoosh(x, 1.0, 0.313261687), atol=2e-5, rtol=1e-6)
    # huge inputs: exp overflows, k2 falls back to x - shift
    big = torch.tensor([1e4])
    assert torch.isfinite(swoosh_l(big)).all()
    # on CPU the training path keeps the exact derivative (the 8-bit dithered one is for GPU memory)
    xg = torch.linspace(-8, 8, 101, requires_grad=True)
    swoosh_l(xg).sum().backward()
    expected = torch.sigmoid(xg.detach() - 4.0) - 0.08
    torch.testing.assert_close(xg.grad, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the 8-bit derivative path runs on CUDA only")
def test_swoosh_quantised_derivative_on_gpu():
    xg = torch.linspace(-8, 8, 101, device="cuda", requires_grad=True)
    swoosh_r(xg).sum().backward()
    expected = torch.sigmoid(xg.detach() - 1.0) - 0.08
    assert (xg.grad - expected).abs().max() < 1.01 / 255


def test_activation_dropout_and_linear_backward_matches_autograd():
    torch.manual_seed(0)
    m = ActivationDropoutAndLinear(12, 7, activation="SwooshR", dropout_p=0.0)
    m.train()
    x = torch.randn(5, 3, 12, requires_grad=True)
    m(x).pow(2).sum().backward()
    gx, gw, gb = x.grad.clone(), m.weight.grad.clone(), m.bias.grad.clone()
    x2 = x.detach().clone().requires_grad_(True)
    w2 = m.weight.detach().clone().requires_grad_(True)
    b2 = m.bias.detach().clone().requires_grad_(True)
    y = torch.nn.functional.linear(_ref_swoosh(x2, 1.0, 0.313261687).float(), w2, b2)
    y.pow(2).sum().backward()
    torch.testing.assert_close(gx, x2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gw, w2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gb, b2.grad, atol=1e-5, rtol=1e-4)


def test_scheduled_float_and_set_batch_count():
    model = nn.Module()
    model.rate = ScheduledFloat((0.0, 0.3), (100.0, 0.1), default=0.05)
    assert float(model.rate) == 0.05  # no batch count yet
    set_batch_count(model, 50)
    assert math.isclose(float(model.rate), 0.2)
    set_batch_count(model, 1e6)
    assert math.isclose(float(model.rate), 0.1)
    model.eval()
    assert float(model.rate) == 0.05  # eval: schedules off


def test_biasnorm_formula():
    torch.manual_seed(0)
    m = BiasNorm(6)
    with torch.no_grad():
        m.bias.normal_()
        m.log_scale.fill_(0.3)
    x = torch.randn(4, 5, 6)
    expected = x * ((x - m.bias) ** 2).mean(-1, keepdim=True) ** -0.5 * math.exp(0.3)
    torch.testing.assert_close(m.eval()(x), expected)


def _regularisers():
    return [
        Balancer(8, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=5.0, max_abs=6.0, prob=1.0),
        Whiten(num_groups=1, whitening_limit=1.0, prob=1.0, grad_scale=0.5),
        ScaleGrad(0.2),
        Dropout3(0.5, shared_dim=0),
    ]


@pytest.mark.parametrize("idx", range(4))
def test_regularisers_are_identity_in_eval(idx):
    m = _regularisers()[idx].eval()
    x = torch.randn(10, 3, 8, requires_grad=True)
    y = m(x)
    assert torch.equal(y, x)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g)  # eval: no gradient shaping either


def test_regularisers_shape_gradients_in_training():
    torch.manual_seed(0)
    # Correlated, small-magnitude data violates both the Balancer (min_abs) and Whiten constraints.
    base = torch.randn(200, 1) * torch.ones(1, 8) * 0.01 + 0.001 * torch.randn(200, 8)
    for m in _regularisers()[:3]:
        m.train()
        x = base.clone().requires_grad_(True)
        y = m(x)
        assert torch.equal(y, x)  # forward is always the identity
        g = torch.randn_like(y)
        y.backward(g)
        assert not torch.allclose(x.grad, g), type(m).__name__


def _reference_balancer_grad(x, g, min_mean, max_mean, min_rms, max_rms, grad_scale, cd):
    """The Balancer gradient as icefall writes it: autograd through every element of x, in float64."""
    xf = x.detach().double().requires_grad_(True)
    dims = [i for i in range(x.ndim) if i != cd % x.ndim]
    sq_mean = (xf**2).mean(dim=dims, keepdim=True)
    mean = xf.mean(dim=dims, keepdim=True)
    m = mean / (sq_mean - mean * mean).clamp(min=1.0e-20).sqrt()
    rms = sq_mean.clamp(min=1.0e-20).sqrt()
    loss = (m - m.clamp(min=min_mean, max=max_mean)).abs() + (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
    loss.sum().backward()
    lg = xf.grad
    lg = lg * (grad_scale / (lg**2).mean(dim=dims, keepdim=True).sqrt().clamp(min=1.0e-20))
    gd = g.double()
    return gd + gd.abs() * lg


@pytest.mark.parametrize("channel_dim", [-1, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_balancer_gradient_matches_the_elementwise_formula(channel_dim, dtype):
    torch.manual_seed(0)
    # channels 0-3 mostly positive and large (mean and rms limits violated), 4-7 within the limits
    x = torch.randn(7, 6, 8)
    x[..., :4] = x[..., :4] * 10 + 30
    if channel_dim == 1:
        x = x.transpose(1, 2).contiguous()  # (7, 8, 6)
    x = x.to(dtype).requires_grad_(True)
    m = Balancer(8, channel_dim=channel_dim, min_positive=0.2, max_positive=0.8, min_abs=0.5, max_abs=4.0,
                 grad_scale=0.04, prob=1.0).train()
    g = torch.randn(x.shape).to(dtype)
    m(x).backward(g)
    from anyphone.models.scaling import _abs_to_rms, _proportion_positive_to_mean

    expected = _reference_balancer_grad(x, g, _proportion_positive_to_mean(0.2), _proportion_positive_to_mean(0.8),
                                        _abs_to_rms(0.5), _abs_to_rms(4.0), 0.04, channel_dim)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    torch.testing.assert_close(x.grad.double(), expected.to(dtype).double(), **tol)
    changed = (x.grad.double() - g.double()).abs().amax(dim=[i for i in range(3) if i != channel_dim % 3])
    assert bool((changed[:4] > 0).all()) and bool((changed[4:] == 0).all())  # only violated channels move


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("std", "mean"), [(1.0, 1000.0), (0.1, 100.0), (1.0e-3, 100.0)])
def test_balancer_gradient_stays_bounded_on_near_constant_channels(dtype, std, mean):
    # E[x^2] - E[x]^2 cancels in float32 for such channels; a float32 version of the closed form once
    # turned that into gradients of 1e19 and more (ScaledAdam then dropped the step as non-finite)
    torch.manual_seed(0)
    x = (torch.randn(400, 4, 8) * std + mean).to(dtype).requires_grad_(True)
    m = Balancer(8, channel_dim=-1, min_positive=0.2, max_positive=0.8, min_abs=0.5, max_abs=4.0,
                 grad_scale=0.04, prob=1.0).train()
    g = torch.randn(x.shape).to(dtype)
    m(x).backward(g)
    change = (x.grad.float() - g.float()) / g.float().abs().clamp(min=1e-6)
    assert bool(torch.isfinite(x.grad.float()).all())
    # x_grad + |x_grad| * lg, lg of rms grad_scale = 0.04 in every channel
    assert float(change.pow(2).mean().sqrt()) == pytest.approx(0.04, rel=0.1)
    assert float(change.abs().max()) < 1.0


def _reference_whiten_grad(x, g, num_groups, grad_scale):
    """The Whiten gradient as icefall computes it: autograd through the metric, in float64."""
    xf = x.detach().double().requires_grad_(True)
    xg = xf.reshape(-1, num_groups, x.shape[-1] // num_groups).transpose(0, 1)
    xg = xg - xg.mean(dim=1, keepdim=True)
    cov = torch.matmul(xg.transpose(1, 2), xg)
    k = cov.shape[0] * cov.shape[1]
    metric = ((cov**2).sum() / k) / ((torch.diagonal(cov, dim1=1, dim2=2).sum() / k) ** 2 + 1.0e-20)
    metric.backward()
    pg = xf.grad
    return g.double() + pg * (grad_scale * g.double().norm() / (pg.norm() + 1.0e-20))


@pytest.mark.parametrize("num_groups", [1, 2])
def test_whiten_gradient_matches_autograd_through_the_metric(num_groups):
    torch.manual_seed(0)
    # strongly correlated channels: the metric is far above the limit
    x = (torch.randn(30, 4, 1) * torch.ones(1, 1, 8) + 0.3 * torch.randn(30, 4, 8)).requires_grad_(True)
    m = Whiten(num_groups=num_groups, whitening_limit=1.2, prob=1.0, grad_scale=0.1).train()
    g = torch.randn(x.shape)
    random.seed(0)
    m(x).backward(g)
    torch.testing.assert_close(x.grad.double(), _reference_whiten_grad(x, g, num_groups, 0.1), atol=1e-5, rtol=1e-4)
    # below the limit the gradient passes through untouched
    x2 = torch.randn(2000, 8).requires_grad_(True)
    m2 = Whiten(num_groups=num_groups, whitening_limit=5.0, prob=1.0, grad_scale=0.1).train()
    m2(x2).backward(g2 := torch.randn(2000, 8))
    assert torch.equal(x2.grad, g2)


def test_limit_param_value_and_penalty_are_forward_identities():
    p = torch.tensor([-3.0, 0.5, 3.0], requires_grad=True)
    y = limit_param_value(p, -1.0, 1.0, prob=1.0)
    assert torch.equal(y, p)
    y.backward(torch.tensor([1.0, 1.0, -1.0]))
    # below range: gradient made negative; above range: made positive; inside: unchanged
    assert p.grad.tolist() == [-1.0, 1.0, 1.0]
    s = torch.tensor([30.0, -30.0, 1.0], requires_grad=True)
    z = penalize_abs_values_gt(s, limit=25.0, penalty=0.5)
    assert torch.equal(z, s)
    z.sum().backward()
    assert s.grad.tolist() == [1.5, 0.5, 1.0]


def test_simple_downsample_and_pad_mask():
    ds = SimpleDownsample(4, downsample=2, dropout=0.0)
    with torch.no_grad():
        ds.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    x = torch.arange(5.0).reshape(5, 1, 1).expand(5, 1, 4)
    y = ds(x)
    assert y.shape == (3, 1, 4)
    torch.testing.assert_close(y[:, 0, 0], torch.tensor([0.75, 2.75, 4.0]))
    assert make_pad_mask(torch.tensor([2, 3])).tolist() == [[False, False, True], [False, False, False]]


def test_rel_pos_encoding_is_relative():
    pe = CompactRelPositionalEncoding(16, dropout_rate=0.0).eval()
    a = pe(torch.zeros(5, 1, 1))
    b = pe(torch.zeros(1200, 1, 1))  # longer than the initial table
    assert a.shape == (1, 9, 16) and b.shape == (1, 2399, 16)
    torch.testing.assert_close(a[0], b[0, 1199 - 4 : 1199 + 5])
    torch.testing.assert_close(a[0, 4], torch.tensor([1.0, 0.0] * 7 + [1.0, 1.0]))  # offset 0


def _batch(n=2, t=131, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, 80, generator=g)
    lens = torch.tensor([t] + [t - 30 * i for i in range(1, n)])
    for i, L in enumerate(lens.tolist()):
        x[i, L:] = 0
    return x, lens


def test_tiny_training_step_has_finite_grads():
    torch.manual_seed(0)
    model = CtcModel(get_preset("tiny"))
    model.train()
    set_batch_count(model, 100)  # early in training: schedules, dropouts and skipping all active
    x, lens = _batch()
    enc, enc_lens = model.forward_encoder(x, lens)
    assert enc.shape == (2, (131 - 7) // 2, 192) and enc_lens.tolist() == [62, 47]
    log_probs = model.ctc_log_probs(enc)
    loss = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), torch.tensor([[5, 6, 7], [8, 9, 9]]), enc_lens, torch.tensor([3, 3])
    )
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    # The unused per-layer bypass_scale (kept for checkpoint compatibility) gets no gradient, and early in
    # training the positional projection (linear_pos) is skipped on random batches; every other parameter has one.
    missing = [n for n, g in grads.items() if g is None and not n.endswith("layers.0.bypass_scale")]
    assert all(n.endswith("self_attn_weights.linear_pos.weight") for n in missing), missing
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)


def test_every_parameter_gets_a_gradient_once_the_skipping_schedules_end():
    torch.manual_seed(0)
    model = CtcModel(get_preset("tiny")).train()
    set_batch_count(model, 100000)  # past every skip schedule
    x, lens = _batch()
    enc, enc_lens = model.forward_encoder(x, lens)
    loss = torch.nn.functional.ctc_loss(
        model.ctc_log_probs(enc).transpose(0, 1), torch.tensor([[5, 6, 7], [8, 9, 9]]), enc_lens, torch.tensor([3, 3])
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and not n.endswith("layers.0.bypass_scale")]
    assert missing == []


def test_tiny_training_step_bf16_autocast():
    torch.manual_seed(0)
    model = CtcModel(get_preset("tiny")).train()
    set_batch_count(model, 30000)
    x, lens = _batch(t=91)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enc, _enc_lens = model.forward_encoder(x, lens)
        loss = model.ctc_log_probs(enc).float().logsumexp(-1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eval_is_deterministic_and_training_is_not():
    torch.manual_seed(0)
    model = CtcModel(get_preset("fixture_tiny")).eval()
    x, lens = _batch(t=101)
    with torch.no_grad():
        a, _ = model.forward_encoder(x, lens)
        b, _ = model.forward_encoder(x, lens)
    assert torch.equal(a, b)
    model.train()
    set_batch_count(model, 0)
    with torch.no_grad():
        c, _ = model.forward_encoder(x, lens)
    assert not torch.allclose(a, c)


def test_transducer_encoder_rate_and_causal_variant():
    cfg = get_preset("fixture_tiny")
    embed, enc = build_encoder(cfg, output_downsampling_factor=2)
    x, lens = _batch(t=131)
    with torch.no_grad():
        e, el = embed.eval()(x, lens)
        out, out_lens = enc.eval()(e.transpose(0, 1), el, make_pad_mask(el))
    assert out.shape[0] == (62 + 1) // 2 and out_lens.tolist() == [31, 24]

    ccfg = cfg.replace(causal=True, chunk_size="16", left_context_frames="64")
    model = CtcModel(ccfg)
    assert any("chunkwise_conv_scale" in k for k in model.state_dict())
    model.train()
    enc_out, _ = model.forward_encoder(x, lens)
    enc_out.sum().backward()
    # chunk-causal: the first chunk's output must not depend on later input
    model.eval()
    with torch.no_grad():
        a, _ = model.forward_encoder(x[:1], lens[:1])
        x2 = x[:1].clone()
        x2[:, 100:] += 5.0
        b, _ = model.forward_encoder(x2, lens[:1])
    torch.testing.assert_close(a[:, :16], b[:, :16])
    assert not torch.allclose(a[:, -5:], b[:, -5:])


def test_presets_and_flags():
    assert count_parameters(CtcModel(get_preset("tiny"))) < 5_000_000
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(
        ["--model-size", "tiny", "--num-encoder-layers", "2,2,2,2,2,2", "--query-head-dim", "24"]
    )
    cfg = config_from_args(args)
    tiny = get_preset("tiny")
    assert cfg.num_encoder_layers == (2,) * 6 and cfg.query_head_dim == (24,)
    assert cfg.encoder_dim == tiny.encoder_dim and cfg.feedforward_dim == tiny.feedforward_dim
    assert config_from_args(parser.parse_args(["--model-size", "large"])) == get_preset("large")
    assert config_from_args(parser.parse_args(["--causal", "true"])).causal is True
    # dict round trip, icefall-style strings (with spaces, as in ZIPA's small config)
    d = get_preset("small").to_dict()
    assert d["encoder_dim"] == "192,256,384,512,384,256"
    assert ZipformerConfig.from_dict(d) == get_preset("small")
    assert ZipformerConfig.from_dict({"encoder_unmasked_dim": "192, 192, 256, 256, 256, 192"}) == get_preset(
        "small"
    )
    with pytest.raises(ValueError, match="num_heads"):
        get_preset("small").replace(num_heads="4,4")
    with pytest.raises(ValueError, match="unknown model size"):
        get_preset("huge")
    # the front end's width: ZIPA's by default, narrower for tiny, settable by flag
    assert get_preset("small").embed_channels == (8, 32, 128) and tiny.embed_channels == (8, 32, 64)
    narrow = config_from_args(parser.parse_args(["--model-size", "small", "--embed-channels", "4,16,48"]))
    assert CtcModel(narrow).encoder_embed.convnext.depthwise_conv.weight.shape[0] == 48
    with pytest.raises(ValueError, match="embed_channels"):
        get_preset("small").replace(embed_channels="8,32")


def test_channels_last_front_end_trains_like_the_default_layout(monkeypatch):
    """On CPU the ConvNeXt trains in channels-last layout (faster oneDNN kernels): same outputs and gradients."""
    from anyphone.models.subsampling import ConvNeXt

    x = torch.randn(2, 9, 64, 19)
    results = []
    for channels_last in (False, True):
        monkeypatch.setattr(ConvNeXt, "channels_last_on_cpu", channels_last)
        torch.manual_seed(0)
        random.seed(0)  # Balancer and Whiten draw from Python's RNG whether to act
        block = ConvNeXt(9, layerdrop_rate=0.0).train()
        xg = x.clone().requires_grad_()
        y = block(xg)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), xg.grad, block.depthwise_conv.weight.grad, block.pointwise_conv1.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_export_code_paths_match_eager(monkeypatch):
    # While exporting, rel_to_abs gathers instead of striding and SimpleDownsample always pads;
    # results must be identical.
    import anyphone.models.subsampling as sub
    import anyphone.models.zipformer as zf

    torch.manual_seed(0)
    model = CtcModel(get_preset("fixture_tiny")).eval()
    x, lens = _batch(n=3, t=123)
    with torch.no_grad():
        ref, ref_lens = model.forward_encoder(x, lens)
        monkeypatch.setattr(zf, "is_exporting", lambda: True)
        monkeypatch.setattr(sub, "is_exporting", lambda: True)
        out, out_lens = model.forward_encoder(x, lens)
    assert torch.equal(out, ref) and torch.equal(out_lens, ref_lens)


def _graph_node_names(t: torch.Tensor) -> set[str]:
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


def _block_with_and_without_own_depthwise_grad(block, x, w, switch: str, bf16: bool = False):
    """Runs ``block`` on ``x`` (loss: sum of output * w) with its attribute ``switch`` True (the depthwise gradients
    from _DepthwiseConv2dTrainCpu) and False (oneDNN's), with the same random draws; returns (output, x's gradient,
    parameter gradients) of each run, having checked which path each took."""
    runs = []
    try:
        for own in (True, False):
            setattr(block, switch, own)
            xi = x.clone().requires_grad_(True)
            block.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the same layer-drop and regulariser draws
            random.seed(1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = block(xi)
            (y.float() * w).sum().backward()
            runs.append((y.detach(), xi.grad, {n: p.grad for n, p in block.named_parameters()},
                         _graph_node_names(y)))
    finally:
        setattr(block, switch, True)
    assert "_DepthwiseConv2dTrainCpuBackward" in runs[0][3] and "_DepthwiseConv2dTrainCpuBackward" not in runs[1][3]
    return [r[:3] for r in runs]


def test_convnext_fast_cpu_depthwise_gradients_match_plain_convolution():
    from anyphone.models.subsampling import ConvNeXt

    torch.manual_seed(0)
    block = ConvNeXt(16).train()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(3, 16, 50, 11)
    w = torch.linspace(-1.0, 1.0, x.numel()).view_as(x)
    (y_fast, gx_fast, gp_fast), (y_ref, gx_ref, gp_ref) = _block_with_and_without_own_depthwise_grad(
        block, x, w, "channels_last_on_cpu")
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_fast, gx_ref, rtol=1e-4, atol=1e-4)
    for name, g in gp_ref.items():
        torch.testing.assert_close(gp_fast[name], g, rtol=1e-4, atol=1e-4 * float(g.abs().max()), msg=name)
    # in eval and without grad the block keeps the plain convolution
    with torch.no_grad():
        assert torch.equal(block.eval()(x), block.eval()(x))


def test_convnext_fast_cpu_depthwise_gradients_under_bf16_autocast():
    """Under CPU bf16 autocast (train.py --use-bf16 1 on a CPU) the depthwise convolution takes its gradients
    from _DepthwiseConv2dTrainCpu too: the same bf16 forward as autocast's convolution, gradients within bf16's
    rounding of oneDNN's, and the weight gradient in fp32 like the parameter."""
    from anyphone.models.subsampling import ConvNeXt

    torch.manual_seed(0)
    block = ConvNeXt(8, layerdrop_rate=0.0).train()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(2, 8, 40, 9)
    w = torch.linspace(-1.0, 1.0, x.numel()).view_as(x)
    conv_out = {}

    def keep_output(module, inputs, output):  # returns None: the output itself goes on
        conv_out["plain"] = output.detach()

    block.depthwise_conv.register_forward_hook(keep_output)  # called on oneDNN's path only
    (_, gx, gp), (_, gx_ref, gp_ref) = _block_with_and_without_own_depthwise_grad(
        block, x, w, "fast_depthwise_grad", bf16=True)
    gw, gb = gp["depthwise_conv.weight"], gp["depthwise_conv.bias"]
    assert gw.dtype == gb.dtype == torch.float32
    # the bf16 forward is autocast's own: the convolution of the bf16-cast input, weight and bias
    xb = x.contiguous(memory_format=torch.channels_last).bfloat16()
    conv = block.depthwise_conv
    fwd = torch.nn.functional.conv2d(xb, conv.weight.bfloat16(), conv.bias.bfloat16(), padding=block.padding,
                                     groups=8)
    assert torch.equal(conv_out["plain"], fwd)
    for got, ref in ((gx, gx_ref), (gw, gp_ref["depthwise_conv.weight"]), (gb, gp_ref["depthwise_conv.bias"])):
        scale = float(ref.abs().max())
        assert scale > 0
        torch.testing.assert_close(got, ref.to(got.dtype), rtol=0, atol=0.02 * scale)
