#!/usr/bin/env python3
"""The demo's plain-CTC training step of the tiny CR-CTC model: eager or ``torch.compile(dynamic=True)``, fp32 or
bf16 autocast, the ConvNeXt's depthwise gradients from anyphone's own function or from oneDNN; optionally
torch.profiler's table of where the step's CPU time goes.

The step (one view, no SpecAugment, CTC loss, backward, ScaledAdam) runs on six synthetic fbank batches of
about --batch-seconds of audio (utterances of 5-15 s, so the shapes change from batch to batch as in
training), cycled for --steps steps. Prints each step's time: the compiled model's first steps include its
compilation and recompilations for new shapes.

Usage:
  python benchmarks/train_compile.py --mode eager
  python benchmarks/train_compile.py --mode compile
  python benchmarks/train_compile.py --dtype bf16 --depthwise onednn --profile 6   # where a bf16 step goes
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_throughput import make_batch, training_setup

from anyphone.models.scaling import set_batch_count
from anyphone.models.subsampling import ConvNeXt
from anyphone.training.loop import tune_cpu_allocator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["eager", "compile"], default="eager")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: CPU autocast, as train.py")
    p.add_argument("--depthwise", choices=["own", "onednn"], default="own",
                   help="the ConvNeXt depthwise convolution's gradients: anyphone's (training's default) or oneDNN's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-seconds", type=float, default=55.0)
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile the last N steps and print the ops by their own CPU time")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tune_cpu_allocator()  # as the training loop does
    ConvNeXt.fast_depthwise_grad = a.depthwise == "own"
    model, opt, family, args = training_setup("tiny", torch.device("cpu"), cr_ctc=False)
    run_model = torch.compile(model, dynamic=True) if a.mode == "compile" else model
    gen = torch.Generator().manual_seed(1)
    batches = [make_batch(a.batch_seconds, torch.device("cpu"), gen) for _ in range(6)]
    label = f"{a.mode} {a.dtype} depthwise-{a.depthwise}"
    times, audio = [], []
    profiler = None
    for step in range(a.steps):
        if a.profile and step == a.steps - a.profile:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profiler.__enter__()
        batch = batches[step % len(batches)]
        set_batch_count(model, 1000.0 + step)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            loss, _ = family.compute_loss(run_model, batch, args, 1000 + step, True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        audio.append(float(batch["feature_lens"].sum()) / 100)
        print(f"{label} step {step:2d} batch {tuple(batch['features'].shape)}: {times[-1]:.3f} s", flush=True)
    if profiler is not None:
        profiler.__exit__(None, None, None)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=48))
    # steps under the profiler run slower: the figures below leave them out
    timed = slice(len(batches), a.steps - a.profile)
    if timed.stop - timed.start < 1:
        print(f"{label}: no step left to time (--steps must exceed {len(batches)} + --profile)")
        return
    print(f"{label}: median of steps {timed.start}-{timed.stop - 1} (every shape seen once before): "
          f"{statistics.median(times[timed]):.3f} s; {sum(audio[timed]) / sum(times[timed]):.1f} s of audio per s")


if __name__ == "__main__":
    main()
