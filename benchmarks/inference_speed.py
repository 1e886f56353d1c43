#!/usr/bin/env python3
"""CPU inference speed of the Zipformer CR-CTC "small" model (random weights) on 10 s of audio:
PyTorch fp32, ONNX Runtime fp32 and ONNX int8, against a wav2vec2-large CTC model (random weights,
transformers' Wav2Vec2ForCTC) at the same thread counts.

Usage:
  python benchmarks/inference_speed.py                       # export (cached in --work-dir) + measure
  python benchmarks/inference_speed.py --export-only         # just build the ONNX files
  python benchmarks/inference_speed.py --threads 1 --repeats 5 --skip-wav2vec2

Each figure is the median of --repeats timed runs after one warm-up run (perf_counter); the systems are
timed round-robin so that load changes on a shared machine affect them alike; look at min too, and at
the load average printed with the table (2-thread figures mean little when the 2 cores are busy).  Zipformer
timings are for the network on precomputed fbank (1000 frames); the fbank itself (kaldi-native-fbank,
as the ONNX runtime computes it) is timed on its own line.  wav2vec2 reads the raw wave.
Real-time factor RTF = compute time / audio duration; "x real time" = 1 / RTF.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

AUDIO_SECONDS = 10.0
SR = 16000


def _interleaved(systems: list[tuple[str, object, int]], repeats: int) -> dict[str, tuple[float, float]]:
    """Time several systems round-robin (one warm-up each, then ``repeats`` rounds, each system once per
    round, a system with its own smaller repeat count dropping out early) so that load changes on a
    shared machine hit them all alike.  Returns {name: (median s, min s)}."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in systems}
    for _, fn, _ in systems:
        fn()
    for r in range(repeats):
        for name, fn, reps in systems:
            if r < reps:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def _loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def export_small(work: Path) -> dict[str, Path]:
    """Random-weight small CR-CTC model -> work/small.onnx and work/small.int8.onnx (cached)."""
    paths = {"fp32": work / "small.onnx", "int8": work / "small.int8.onnx"}
    if all(p.is_file() for p in paths.values()):
        return paths
    import torch

    from anyphone.export.onnx import export_ctc_model
    from anyphone.models.ctc import CtcModel
    from anyphone.models.presets import get_preset

    torch.manual_seed(0)
    model = CtcModel(get_preset("small")).eval()
    torch.save(model.state_dict(), work / "small_random.pt")
    t0 = time.perf_counter()
    export_ctc_model(model, paths["fp32"], int8=True)
    print(f"exported small model in {time.perf_counter() - t0:.0f} s -> {work}", file=sys.stderr)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/anyphone_bench"))
    ap.add_argument("--threads", type=str, default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--w2v2-repeats", type=int, default=3)
    ap.add_argument("--skip-wav2vec2", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    paths = export_small(args.work_dir)
    if args.export_only:
        return

    import torch

    from anyphone.inference.onnx_runtime import fbank_batch, make_session
    from anyphone.models.ctc import CtcModel
    from anyphone.models.presets import get_preset

    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(int(AUDIO_SECONDS * SR))).astype(np.float32)
    feats, lens = fbank_batch([wave])  # (1, 1000, 80)
    threads = [int(t) for t in args.threads.split(",")]

    model = CtcModel(get_preset("small")).eval()
    model.load_state_dict(torch.load(args.work_dir / "small_random.pt", weights_only=True))
    x_t, l_t = torch.from_numpy(feats), torch.from_numpy(lens)

    w2v2 = None
    w2v2_note = ""
    if not args.skip_wav2vec2:
        try:
            from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

            # wav2vec2-large(-lv60) architecture: 24 layers, 1024 dim, 16 heads, FFN 4096, layer-norm conv
            # feature extractor with bias, pre-LN transformer; CTC head over ZIPA's 127 tokens
            cfg = Wav2Vec2Config(
                hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, vocab_size=127,
            )
            torch.manual_seed(0)
            w2v2 = Wav2Vec2ForCTC(cfg).eval()
            w2v2_note = f"wav2vec2-large: {sum(p.numel() for p in w2v2.parameters()) / 1e6:.0f}M params"
        except ImportError as e:
            w2v2_note = f"wav2vec2-large skipped: transformers not importable ({e})"

    load0 = _loadavg()
    rows = []  # (system, threads, median, min)
    for n in threads:
        torch.set_num_threads(n)
        feed = {"x": feats, "x_lens": lens}
        sessions = {prec: make_session(paths[prec], "cpu", num_threads=n) for prec in ("fp32", "int8")}
        systems = [
            ("fbank (kaldi-native-fbank)", lambda: fbank_batch([wave]), args.repeats),
            ("zipformer small, PyTorch fp32", lambda: model(x_t, l_t), args.repeats),
            ("zipformer small, ONNX fp32", lambda s=sessions["fp32"], f=feed: s.run(None, f), args.repeats),
            ("zipformer small, ONNX int8", lambda s=sessions["int8"], f=feed: s.run(None, f), args.repeats),
        ]
        if w2v2 is not None:
            wt = torch.from_numpy(wave)[None]
            systems.append(("wav2vec2-large, PyTorch fp32", lambda w=wt: w2v2(w).logits, args.w2v2_repeats))
        with torch.inference_mode():
            res = _interleaved(systems, max(args.repeats, args.w2v2_repeats))
        rows.extend((name, n, *res[name]) for name, _, _ in systems)

    n_small = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\nload average before/after: {load0} / {_loadavg()}")
    print(f"\n10 s of audio, CPU ({torch.get_num_interop_threads()} inter-op), zipformer small {n_small:.0f}M params; "
          f"{w2v2_note}")
    print(f"{'system':34s} {'thr':>3s} {'median s':>9s} {'min s':>7s} {'RTF':>7s} {'x RT':>7s} {'vs w2v2':>8s}")
    ref = {r[1]: r[2] for r in rows if r[0].startswith("wav2vec2")}
    for name, n, med, mn in rows:
        vs = f"{ref[n] / med:7.1f}x" if n in ref and not name.startswith(("wav2vec2", "fbank")) else ""
        print(f"{name:34s} {n:3d} {med:9.3f} {mn:7.3f} {med / AUDIO_SECONDS:7.4f} {AUDIO_SECONDS / med:7.1f} {vs:>8s}")
    for n in threads:
        int8 = next(r[2] for r in rows if r[0] == "zipformer small, ONNX int8" and r[1] == n)
        line = f"targets @ {n} thread(s): ONNX int8 {AUDIO_SECONDS / int8:.1f}x real time"
        if n == 1:
            line += " (target >= 40x: " + ("met" if AUDIO_SECONDS / int8 >= 40 else "NOT met") + ")"
        if n in ref:
            sp = ref[n] / int8
            line += f"; {sp:.1f}x faster than wav2vec2-large (target >= 15x: " + ("met" if sp >= 15 else "NOT met") + ")"
        print(line)


if __name__ == "__main__":
    main()
