#!/usr/bin/env python3
"""Encoder inference speed on CPU, as a real-time factor (seconds of audio per second of compute).

Usage:
    .venv/bin/python benchmarks/encoder_speed.py                    # small, 10 s, 1 and 2 threads
    .venv/bin/python benchmarks/encoder_speed.py --sizes small large --seconds 10 --repeats 5

The encoder (Conv2dSubsampling + Zipformer2, fp32, eval, inference_mode) runs on one utterance of
fbank-shaped random input (100 frames per second); weights are random (speed does not depend on
them).  Reference: ZIPA reports ~19x real time on one core for small and ~6x for large.
Figures are noisy on a shared machine: the median of --repeats runs is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from anyphone.models import CtcModel, count_parameters, get_preset


def time_encoder(model: CtcModel, seconds: float, threads: int, repeats: int) -> float:
    """Median wall time (s) of one forward_encoder call on `seconds` of audio."""
    torch.set_num_threads(threads)
    frames = round(seconds * 100)
    x = torch.randn(1, frames, 80)
    x_lens = torch.tensor([frames])
    times = []
    with torch.inference_mode():
        model.forward_encoder(x, x_lens)  # warm-up (allocations, positional table)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.forward_encoder(x, x_lens)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["small"], help="presets to time, e.g. tiny small large")
    p.add_argument("--seconds", type=float, default=10.0, help="audio duration")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, fp32 CPU, {args.seconds:g} s of audio, median of {args.repeats}")
    for size in args.sizes:
        model = CtcModel(get_preset(size)).eval()
        n = count_parameters(model)
        for th in args.threads:
            t = time_encoder(model, args.seconds, th, args.repeats)
            print(
                f"{size:6s} {n / 1e6:6.1f}M params  threads={th}  {t * 1000:8.1f} ms  "
                f"RTF={t / args.seconds:.4f}  ({args.seconds / t:5.1f}x real time)"
            )


if __name__ == "__main__":
    main()
