"""Fused training operators (anyphone/models/fused.py): the PyTorch path against plain formulas, and the Triton
kernels against the PyTorch path in Triton's CPU interpreter when Triton is installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from anyphone.models import fused

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def _ref(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    shift, offset = fused.SWOOSH[kind]
    xd = x.double()
    return torch.nn.functional.softplus(xd - shift) - 0.08 * xd - offset, torch.sigmoid(xd - shift) - 0.08


@pytest.mark.parametrize("kind", ["SwooshL", "SwooshR"])
def test_swoosh_value_and_derivative(kind):
    x = torch.linspace(-30, 30, 601)
    y, d = fused.swoosh_and_derivative(x, kind, torch.float32)
    y_ref, d_ref = _ref(x, kind)
    torch.testing.assert_close(y.double(), y_ref, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(d.double(), d_ref, atol=1e-6, rtol=1e-6)
    y2, empty = fused.swoosh_and_derivative(x, kind)
    assert torch.equal(y2, y) and empty.numel() == 0


def test_quantized_derivative_is_unbiased_and_within_one_step():
    torch.manual_seed(0)
    x = torch.full((200_000,), 0.7)
    _, q = fused.swoosh_and_derivative(x, "SwooshL", torch.uint8)
    assert q.dtype == torch.uint8
    exact = float(_ref(x[:1], "SwooshL")[1])
    g = torch.ones_like(x)
    d = fused.scale_by_quantized_derivative(g, q)
    step = (fused.DERIV_HI - fused.DERIV_LO) / 255
    assert float((d - exact).abs().max()) <= step + 1e-6
    assert abs(float(d.mean()) - exact) < step / 50  # stochastic rounding: the mean is the exact value


@pytest.mark.parametrize("shared_dim", [0, 1, 2, None])
def test_swoosh_with_dropout_mask(shared_dim):
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4) * 4
    shape = list(x.shape)
    if shared_dim is not None:
        shape[shared_dim] = 1
    mask = (torch.rand(shape) > 0.3).float() / 0.7
    y, d = fused.swoosh_and_derivative(x, "SwooshR", torch.float32, mask)
    y_ref, d_ref = _ref(x, "SwooshR")
    torch.testing.assert_close(y.double(), y_ref * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d.double(), d_ref * mask, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="8-bit"):
        fused.swoosh_and_derivative(x, "SwooshR", torch.uint8, mask)


def test_balancer_gradient_formula():
    torch.manual_seed(0)
    g, x = torch.randn(4, 6, 3), torch.randn(4, 6, 3)
    a, b = torch.randn(1, 6, 1), torch.randn(1, 6, 1)
    out = fused.balancer_gradient(g.bfloat16(), x.bfloat16(), a, b, 1)
    assert out.dtype == torch.bfloat16
    expected = g.bfloat16().float() + g.bfloat16().float().abs() * (a + b * x.bfloat16().float())
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=1e-2)


def test_custom_ops_trace_as_single_ops():
    # torch.compile / export see one operator, with shapes from the fake implementation
    x = torch.randn(2, 3)
    gm = torch.fx.experimental.proxy_tensor.make_fx(lambda t: fused.swoosh_and_derivative(t, "SwooshL", torch.uint8))(x)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.anyphone.swoosh_and_derivative.default in targets


def check_triton_kernels(dtype: torch.dtype, device: str = "cpu") -> None:
    """The Triton kernels against the PyTorch path; on the CPU, in a process started with TRITON_INTERPRET=1."""
    kernels = fused.build_triton_kernels()
    torch.manual_seed(0)
    torch.set_default_device(device)
    x = (torch.randn(37, 5, 29) * 6).to(dtype)
    # one bfloat16 rounding step of the largest value, where the two paths may round differently
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.13, "rtol": 8e-3}
    for shift, offset in fused.SWOOSH.values():
        for mask_shape in (None, (1, 5, 29), (37, 5, 1)):
            mask = None if mask_shape is None else ((torch.rand(mask_shape) > 0.2).to(dtype) * 1.25)
            y, d = kernels.swoosh(x, shift, offset, dtype, mask)
            y_ref, d_ref = fused._swoosh_torch(x, shift, offset, dtype, mask)
            assert y.dtype == d.dtype == dtype
            torch.testing.assert_close(y.float(), y_ref.float(), **tol)
            torch.testing.assert_close(d.float(), d_ref.float(), **tol)
        y, q = kernels.swoosh(x, shift, offset, torch.uint8, None)
        assert q.dtype == torch.uint8
        d = q.float() / fused._Q_SCALE + fused.DERIV_LO
        step = (fused.DERIV_HI - fused.DERIV_LO) / 255
        assert float((d - fused.swoosh_slope(x, shift)).abs().max()) <= step + 1e-6
        g = torch.randn(x.shape).to(dtype)
        torch.testing.assert_close(kernels.dequantize_mul(g, q).float(), (g.float() * d).to(dtype).float(),
                                   atol=1e-2, rtol=1e-2)
    g, xb = torch.randn(4, 6, 3).to(dtype), torch.randn(4, 6, 3).to(dtype)
    for cd, shape in ((1, (1, 6, 1)), (-1, (1, 1, 3)), (0, (4, 1, 1))):
        a, b = torch.randn(shape), torch.randn(shape)
        expected = torch.addcmul(g, g.abs(), torch.addcmul(a, b, xb)).to(dtype)
        torch.testing.assert_close(kernels.balancer(g, xb, a, b, cd).float(), expected.float(),
                                   atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=1e-2)


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_kernels_match_pytorch(dtype):
    # Triton picks its interpreter when its modules are imported, so the check needs a fresh process.
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, __file__, dtype], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernels_on_the_gpu(dtype):
    try:
        check_triton_kernels(dtype, "cuda")
    finally:
        torch.set_default_device(None)


def test_failed_kernel_falls_back_to_pytorch(monkeypatch):
    class Broken:
        def swoosh(self, *args):
            raise RuntimeError("no GPU compiler")

    monkeypatch.setattr(fused.TRITON, "kernels", Broken())
    assert fused._run_triton("swoosh", torch.zeros(1)) is None
    assert fused.TRITON.kernels is False  # disabled for the rest of the run, with a warning
    assert not fused.triton_enabled(torch.zeros(1))


if __name__ == "__main__":
    check_triton_kernels(getattr(torch, sys.argv[1]))
