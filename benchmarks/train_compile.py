#!/usr/bin/env python3
"""Plain-CTC training steps of the tiny CR-CTC model, eager against ``torch.compile(dynamic=True)``.

The demo's step (one view, no SpecAugment, CTC loss, backward, ScaledAdam) on six synthetic fbank batches of
about --batch-seconds of audio (utterances of 5-15 s, so the shapes change from batch to batch as in
training), cycled for --steps steps. Prints each step's time: the compiled model's first steps include its
compilation and recompilations for new shapes.

Usage:
  python benchmarks/train_compile.py --mode eager
  python benchmarks/train_compile.py --mode compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_throughput import make_batch, training_setup

from anyphone.models.scaling import set_batch_count
from anyphone.training.loop import tune_cpu_allocator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["eager", "compile"], default="eager")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-seconds", type=float, default=55.0)
    p.add_argument("--steps", type=int, default=14)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tune_cpu_allocator()  # as the training loop does
    model, opt, family, args = training_setup("tiny", torch.device("cpu"), cr_ctc=False)
    run_model = torch.compile(model, dynamic=True) if a.mode == "compile" else model
    gen = torch.Generator().manual_seed(1)
    batches = [make_batch(a.batch_seconds, torch.device("cpu"), gen) for _ in range(6)]
    times = []
    for step in range(a.steps):
        batch = batches[step % len(batches)]
        set_batch_count(model, 1000.0 + step)
        t0 = time.perf_counter()
        loss, _ = family.compute_loss(run_model, batch, args, 1000 + step, True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        print(f"{a.mode} step {step:2d} batch {tuple(batch['features'].shape)}: {times[-1]:.3f} s", flush=True)
    print(f"{a.mode}: median of steps {len(batches)}-{a.steps - 1} (every shape seen once before): "
          f"{statistics.median(times[len(batches):]):.3f} s")


if __name__ == "__main__":
    main()
