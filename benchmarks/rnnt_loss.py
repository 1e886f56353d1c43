"""Time and peak memory of one RNN-T loss training step (forward + backward).

Cases: our pure-PyTorch pruned and full losses, and fast_rnnt's (same code as k2) when it is
importable.  "pruned" is the icefall recipe: smoothed simple loss with return_grad, prune
ranges, do_rnnt_pruning, additive joiner on the pruned (B, T, R, V) grid, pruned loss; "full"
is the unpruned loss on the (B, T, U+1, V) additive joiner output.  Each case runs in its own
subprocess so that CPU peak memory (ru_maxrss growth during the first full-size step, after a small warm-up
step) is not polluted.

    python benchmarks/rnnt_loss.py                       # CPU, 1 thread, vocab 127 and 500
    python benchmarks/rnnt_loss.py --device cuda --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _step_fn(backend: str, mode: str, B: int, T: int, U: int, V: int, prune_range: int, device: str):
    import torch

    from anyphone.losses.rnnt import get_rnnt_backend

    k = get_rnnt_backend(backend)
    g = torch.Generator().manual_seed(0)
    am = torch.randn(B, T, V, generator=g).to(device).requires_grad_()
    lm = torch.randn(B, U + 1, V, generator=g).to(device).requires_grad_()
    symbols = torch.randint(1, V, (B, U), generator=g).to(device)
    boundary = torch.zeros(B, 4, dtype=torch.int64, device=device)
    boundary[:, 2] = U
    boundary[:, 3] = T

    def pruned_step() -> float:
        simple, (px_grad, py_grad) = k.rnnt_loss_smoothed(
            lm=lm, am=am, symbols=symbols, termination_symbol=0, lm_only_scale=0.25, am_only_scale=0.0,
            boundary=boundary, reduction="sum", return_grad=True,
        )
        ranges = k.get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=prune_range)
        am_p, lm_p = k.do_rnnt_pruning(am=am, lm=lm, ranges=ranges)
        pruned = k.rnnt_loss_pruned(
            logits=am_p + lm_p, symbols=symbols, ranges=ranges, termination_symbol=0, boundary=boundary,
            reduction="sum",
        )
        loss = 0.5 * simple + pruned
        loss.backward()
        return float(loss)

    def full_step() -> float:
        logits = am.unsqueeze(2) + lm.unsqueeze(1)
        loss = k.rnnt_loss(logits=logits, symbols=symbols, termination_symbol=0, boundary=boundary, reduction="sum")
        loss.backward()
        return float(loss)

    return pruned_step if mode == "pruned" else full_step


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    # One small step first: it loads the kernels' code pages and initialises the libraries, which would
    # otherwise count as "peak memory" of the measured step on CPU.
    _step_fn(args.backend, args.mode, 2, 20, 8, args.vocab, args.prune_range, args.device)()
    step = _step_fn(args.backend, args.mode, args.B, args.T, args.U, args.vocab, args.prune_range, args.device)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    loss = step()  # warm-up, also the memory measurement
    sync()
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"ms": 1000 * times[len(times) // 2], "peak_mb": peak_mb, "loss": loss}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--T", type=int, default=250)
    p.add_argument("--U", type=int, default=80)
    p.add_argument("--vocab", type=int, nargs="+", default=[127, 500])
    p.add_argument("--prune-range", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per case (median reported)")
    p.add_argument("--backends", nargs="+", default=["torch", "fast_rnnt"])
    p.add_argument("--modes", nargs="+", default=["pruned", "full"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="pruned", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.vocab = args.vocab[0]
        _child(args)
        return

    backends = []
    for b in args.backends:
        if b == "torch":
            backends.append(b)
            continue
        try:
            __import__(b)
            backends.append(b)
        except ImportError:
            print(f"# {b} not importable: skipped")
    print(f"# B={args.B} T={args.T} U={args.U} prune_range={args.prune_range} device={args.device} "
          f"threads={args.threads} repeats={args.repeats}; fwd+bwd per step, median")
    print(f"| {'backend':10s} | {'mode':6s} | {'vocab':>5s} | {'ms/step':>9s} | {'peak MiB':>9s} | {'loss':>12s} |")
    print("|" + "|".join("-" * w for w in (12, 8, 7, 11, 11, 14)) + "|")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for V in args.vocab:
        for mode in args.modes:
            for b in backends:
                cmd = [sys.executable, __file__, "--child", "--backend", b, "--mode", mode, "--vocab", str(V),
                       "--device", args.device, "--threads", str(args.threads), "--B", str(args.B),
                       "--T", str(args.T), "--U", str(args.U), "--prune-range", str(args.prune_range),
                       "--repeats", str(args.repeats)]
                res = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    print(f"| {b:10s} | {mode:6s} | {V:5d} | failed: {res.stderr.strip().splitlines()[-1:]} |")
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                print(f"| {b:10s} | {mode:6s} | {V:5d} | {r['ms']:9.1f} | {r['peak_mb']:9.1f} | {r['loss']:12.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
