#!/usr/bin/env python3
"""Where a CR-CTC training step's GPU time goes, counted on the CPU: kernels, bytes moved, FLOPs.

Runs real training steps (two SpecAugmented views, CTC + CR loss, backward, ScaledAdam step) on the CPU
under bf16 autocast and records every ATen operator they dispatch (views excluded): the bytes it reads and
writes, and the FLOPs of matrix products and convolutions. Backward operators are charged to the forward line
that created them. The counts are measured; the time is a roofline *estimate* for a GPU, per operator
``max(bytes / bandwidth, flops / peak) + launch``, with bytes and FLOPs scaled linearly from --seconds to
--scale-to seconds of audio per batch. It says which code moves the memory; it is not a GPU measurement
(on the H100 the estimate was 1.5x above the measured 895 s/s before the fused kernels; see RESULTS.md).

Usage:
  python benchmarks/step_traffic.py                          # small, 60 s counted, scaled to 1000 s batches
  python benchmarks/step_traffic.py --model-size tiny --by op --top 20
"""

from __future__ import annotations

import argparse
import ast
import functools
import random
import re
import sys
import traceback
import warnings
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import make_batch

from anyphone.families.crctc import CrCtcFamily
from anyphone.models.ctc import CtcModel
from anyphone.models.presets import get_preset
from anyphone.models.scaling import set_batch_count
from anyphone.optim import ScaledAdam

# operators that return views or metadata without a kernel of their own
_FREE = {"aten._unsafe_view.default", "aten.detach.default", "aten.lift_fresh.default"}
_FRAME = re.compile(r'File "([^"]*anyphone[^"]*)", line (\d+), in (\w+)')


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _flops(name: str, args, out) -> int:
    ts = [a for a in args if isinstance(a, torch.Tensor)]
    if name.startswith(("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm")):
        a, b = ts[-2], ts[-1]
        return 2 * a.numel() * b.shape[-1]
    if name.startswith("aten.convolution_backward"):
        grad, weight = ts[0], ts[2]
        return 2 * 2 * grad.numel() * weight[0].numel()
    if name.startswith("aten.convolution"):
        return 2 * out.numel() * ts[1][0].numel()
    return 0


@functools.cache
def _functions(path: str) -> list[tuple[int, int, str]]:
    """(first line, last line, Class.method) of every function in a source file."""
    out = []

    def walk(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((child.lineno, child.end_lineno or child.lineno, prefix + child.name))
                walk(child, f"{prefix}{child.name}.")

    walk(ast.parse(Path(path).read_text()), "")
    return out


def _source(frames: list[tuple[str, str, str]]) -> str:
    if not frames:
        return "(outside anyphone)"
    path, line, func = frames[-1]
    n = int(line)
    inside = [f for f in _functions(path) if f[0] <= n <= f[1]]
    name = min(inside, key=lambda f: f[1] - f[0])[2] if inside else func
    return f"{name} ({path.split('anyphone/')[-1]}:{line})"


class OpRecorder(TorchDispatchMode):
    """Records (phase, operator, bytes, flops, source line) for every kernel-launching operator."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.rows: list[tuple[str, str, int, int, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        if name in _FREE or any(r.alias_info is not None for r in func._schema.returns):
            return out
        flat_in, _ = tree_flatten((args, kwargs))
        flat_out, _ = tree_flatten(out)
        if self.phase == "forward":
            stack = traceback.extract_stack(limit=40)
            where = _source([(f.filename, str(f.lineno), f.name) for f in stack if "anyphone" in f.filename])
        elif self.phase == "backward":
            node = torch._C._current_autograd_node()
            tb = node.metadata.get("traceback_", "") if node is not None else ""
            where = _source(_FRAME.findall(tb if isinstance(tb, str) else "".join(tb)))
        else:
            where = "optimizer step"
        self.rows.append((self.phase, name, _bytes(flat_in) + _bytes(flat_out), _flops(name, args, out), where))
        return out


def count_step(size: str, seconds: float, steps: int) -> OpRecorder:
    torch.manual_seed(0)
    random.seed(0)  # which Balancer / Whiten modules act is drawn from Python's RNG
    model = CtcModel(get_preset(size)).train()
    opt = ScaledAdam(list(model.named_parameters()), lr=0.045, clipping_scale=2.0)
    task = CrCtcFamily()
    args = SimpleNamespace(use_cr_ctc=True, enable_model_spec_aug=True, time_mask_ratio=2.5, cr_loss_scale=0.15,
                           cr_warmup_batches=0, ctc_loss_scale=1.0, use_unsup_cr_ctc=False,
                           unsup_cr_ctc_loss_scale=0.5)
    batch = make_batch(seconds, torch.device("cpu"), torch.Generator().manual_seed(1))
    # anomaly mode only serves to record each backward node's forward traceback here
    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    rec = OpRecorder()
    for step in range(steps):  # the last step is the one kept (the first ones set up optimizer state)
        set_batch_count(model, 1000.0 + step)
        rec = OpRecorder()
        with rec, torch.autograd.detect_anomaly(check_nan=False):
            rec.phase = "forward"
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = task.compute_loss(model, batch, args, 1000 + step, True)
            rec.phase = "backward"
            loss.backward()
            rec.phase = "optimizer"
            opt.step()
            opt.zero_grad(set_to_none=True)
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="small")
    p.add_argument("--seconds", type=float, default=60.0, help="audio in the counted batch")
    p.add_argument("--scale-to", type=float, default=1000.0, help="audio per batch of the estimate")
    p.add_argument("--bandwidth", type=float, default=2.5, help="TB/s reached by elementwise kernels")
    p.add_argument("--tflops", type=float, default=400.0, help="bf16 TFLOP/s reached by matrix products")
    p.add_argument("--launch-us", type=float, default=4.0, help="GPU time of the smallest kernel")
    p.add_argument("--by", choices=["source", "op"], default="source")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rec = count_step(a.model_size, a.seconds, steps=2)
    k = a.scale_to / a.seconds
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    by_phase: dict[str, float] = defaultdict(float)
    moved = flops = est = 0.0
    for phase, name, nbytes, nflops, where in rec.rows:
        scale = 1.0 if phase == "optimizer" else k  # optimizer work does not grow with the batch
        b, f = nbytes * scale, nflops * scale
        t = max(b / (a.bandwidth * 1e12), f / (a.tflops * 1e12)) + a.launch_us * 1e-6
        key = (phase if a.by == "op" else "", name if a.by == "op" else where)
        row = totals[key]
        row[0] += 1
        row[1] += t
        row[2] += b
        row[3] += f
        by_phase[phase] += t
        moved, flops, est = moved + b, flops + f, est + t
    print(f"{a.model_size} CR-CTC training step, bf16 autocast, counted on {a.seconds:.0f} s of audio and "
          f"scaled to {a.scale_to:.0f} s")
    print(f"kernels per step: {len(rec.rows):,}; moved {moved / 1e9:,.0f} GB; {flops / 1e12:.1f} TFLOP")
    print(f"roofline estimate ({a.bandwidth} TB/s, {a.tflops:.0f} TFLOP/s, {a.launch_us} us per kernel): "
          f"{est * 1e3:.0f} ms per step = {a.scale_to / est:,.0f} s of audio per second "
          f"(forward {by_phase['forward'] * 1e3:.0f}, backward {by_phase['backward'] * 1e3:.0f}, "
          f"optimizer {by_phase['optimizer'] * 1e3:.0f} ms)")
    print(f"{'est. ms':>8} {'kernels':>8} {'GB':>7} {'TFLOP':>6}  {'operator' if a.by == 'op' else 'forward source'}")
    for (phase, what), (n, t, b, f) in sorted(totals.items(), key=lambda kv: -kv[1][1])[: a.top]:
        print(f"{t * 1e3:8.1f} {int(n):8d} {b / 1e9:7.1f} {f / 1e12:6.2f}  {(phase + ' ') if phase else ''}{what}")


if __name__ == "__main__":
    main()
