#!/usr/bin/env python3
"""Training cost of the front end's 3x3 convolutions in contiguous (NCHW) and channels-last layout on CPU.

Each row times one convolution of the preset's Conv2dSubsampling, forward and backward (input, weight and bias
gradients; the first layer has no input gradient, as in training), on a demo-sized batch, and says whether the
two layouts give the same bits. It is the evidence for which layout the front end trains in.

Usage:
  python benchmarks/frontend_layouts.py                        # tiny preset, 14 utterances of 5.5 s, 2 threads
  python benchmarks/frontend_layouts.py --model-size small --threads 4
"""

from __future__ import annotations

import argparse
import time

import torch

from anyphone.models.ctc import CtcModel
from anyphone.models.presets import get_preset
from anyphone.training.loop import tune_cpu_allocator


def time_ms(fn, repeats: int) -> float:
    fn()
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def run_layer(conv: torch.nn.Conv2d, inp: torch.Tensor, grad_out: torch.Tensor, channels_last: bool):
    """One training pass of ``conv``: its output and the input, weight and bias gradients (NCHW copies)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    needs_input_grad = inp.shape[1] > 1  # the first layer's input is the fbank
    x = inp.contiguous(memory_format=fmt).detach().requires_grad_(needs_input_grad)
    y = conv(x)
    conv.zero_grad(set_to_none=True)
    y.backward(grad_out.contiguous(memory_format=fmt))
    gx = x.grad.contiguous() if needs_input_grad else None
    return y.detach().contiguous(), gx, conv.weight.grad.clone(), conv.bias.grad.clone()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--utterances", type=int, default=14)
    p.add_argument("--frames", type=int, default=550, help="fbank frames per utterance (100 Hz)")
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tune_cpu_allocator()
    torch.manual_seed(0)
    embed = CtcModel(get_preset(a.model_size)).encoder_embed.train()
    convs = [m for m in embed.conv if isinstance(m, torch.nn.Conv2d)]
    # the input of each convolution, as the front end produces it from a batch of fbank
    x = torch.randn(a.utterances, 1, a.frames, 80)
    inputs = []
    with torch.no_grad():
        h = x
        for m in embed.conv:
            if isinstance(m, torch.nn.Conv2d):
                inputs.append(h)
            h = m(h)

    print(f"Front-end convolutions ({a.model_size}), forward + backward, {a.utterances} x {a.frames} frames, "
          f"CPU, {a.threads} threads")
    print(f"{'layer':<22}{'input':>22}{'NCHW ms':>10}{'chan-last ms':>14}{'same bits':>11}")
    for conv, inp in zip(convs, inputs):
        grad_out = torch.randn(conv(inp).shape)
        nchw, chan_last = run_layer(conv, inp, grad_out, False), run_layer(conv, inp, grad_out, True)
        same = all(u is None or torch.equal(u, v) for u, v in zip(nchw, chan_last))
        t_nchw = time_ms(lambda c=conv, i=inp, g=grad_out: run_layer(c, i, g, False), a.repeats)
        t_cl = time_ms(lambda c=conv, i=inp, g=grad_out: run_layer(c, i, g, True), a.repeats)
        name = f"{conv.in_channels}->{conv.out_channels}, stride {conv.stride}"
        print(f"{name:<22}{list(inp.shape)!s:>22}{t_nchw:>10.1f}{t_cl:>14.1f}{same!s:>11}")

if __name__ == "__main__":
    main()
