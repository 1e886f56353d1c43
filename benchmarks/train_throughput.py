#!/usr/bin/env python3
"""Training throughput of the CR-CTC model: seconds of audio per second and peak memory.

Times full training steps (two SpecAugmented views, CTC + CR loss, backward, ScaledAdam step) on synthetic
fbank batches of --batch-seconds of audio (utterances of 5-15 s), after warm-up steps.

Usage:
  python benchmarks/train_throughput.py --model-size tiny small --threads 2           # CPU, fp32
  python benchmarks/train_throughput.py --model-size small --device cuda --dtype bf16 --batch-seconds 1000
"""

from __future__ import annotations

import argparse
import resource
import time
from types import SimpleNamespace

import torch

from anyphone.families.crctc import CrCtcFamily
from anyphone.models.ctc import CtcModel
from anyphone.models.presets import get_preset
from anyphone.models.scaling import set_batch_count
from anyphone.optim import ScaledAdam
from anyphone.training.loop import tune_cpu_allocator


def make_batch(batch_seconds: float, device: torch.device, gen: torch.Generator) -> dict:
    lens = []
    while sum(lens) < batch_seconds * 100:
        lens.append(int(torch.randint(500, 1500, (), generator=gen)))
    t = max(lens)
    feats = torch.randn(len(lens), t, 80, generator=gen) * 2 - 8
    for i, n in enumerate(lens):
        feats[i, n:] = 0
    # about 12 phones per second, as in the eSpeak corpus
    tokens = [torch.randint(4, 127, (n * 12 // 100,), generator=gen).tolist() for n in lens]
    return {"features": feats.to(device), "feature_lens": torch.tensor(lens, device=device), "token_ids": tokens}


def training_setup(size: str, device: torch.device, cr_ctc: bool = True):
    """(model, ScaledAdam, family, loss args) for CR-CTC steps (two SpecAugmented views), or with ``cr_ctc=False``
    the demo's plain-CTC steps (one view, no SpecAugment in the model); seeded, so every run starts alike."""
    torch.manual_seed(0)
    model = CtcModel(get_preset(size)).to(device).train()
    opt = ScaledAdam(list(model.named_parameters()), lr=0.045, clipping_scale=2.0)
    args = SimpleNamespace(use_cr_ctc=cr_ctc, enable_model_spec_aug=cr_ctc, time_mask_ratio=2.5, cr_loss_scale=0.15,
                           cr_warmup_batches=0, ctc_loss_scale=1.0, use_unsup_cr_ctc=False,
                           unsup_cr_ctc_loss_scale=0.5)
    return model, opt, CrCtcFamily(), args


def measure(size: str, device: torch.device, dtype: str, batch_seconds: float, steps: int, warmup: int) -> dict:
    model, opt, task, args = training_setup(size, device)
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    batches = [make_batch(batch_seconds, device, gen) for _ in range(3)]
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16", init_scale=1.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    audio = 0.0
    elapsed = 0.0
    for step in range(warmup + steps):
        batch = batches[step % len(batches)]
        set_batch_count(model, 1000.0 + step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, _ = task.compute_loss(model, batch, args, 1000 + step, True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            elapsed += time.perf_counter() - t0
            audio += float(batch["feature_lens"].sum()) / 100
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"size": size, "params": params, "audio_per_sec": audio / elapsed, "peak_gib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", nargs="+", default=["tiny", "small"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-seconds", type=float, default=120.0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tune_cpu_allocator()  # as the training loop does
    device = torch.device(a.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {a.threads} threads"
    print(f"CR-CTC training throughput on {where}, {a.dtype}, batches of {a.batch_seconds:.0f} s of audio")
    print(f"{'model':<8}{'params':>14}{'audio s / s':>14}{'peak GiB':>11}")
    for size in a.model_size:
        r = measure(size, device, a.dtype, a.batch_seconds, a.steps, a.warmup)
        print(f"{r['size']:<8}{r['params']:>14,}{r['audio_per_sec']:>14.1f}{r['peak_gib']:>11.2f}")
    if device.type == "cpu":
        print("(CPU peak memory is the process's maximum resident set size)")


if __name__ == "__main__":
    main()
