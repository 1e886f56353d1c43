#!/usr/bin/env python3
"""Data throughput: seconds of audio per second delivered by one data-loader worker, local and over HTTP.

Writes a synthetic Shar corpus (16 kHz FLAC, utterances of 2-12 s), serves it from a loopback HTTP server
(``http.server``, the way a web server or CDN would serve a Shar folder with its ``cuts.index.json``) and
measures, for the folder and for ``http://127.0.0.1:PORT/...``:

* read: the sampler alone (shards streamed, tar members parsed, cuts bucketed; FLAC bytes not decoded); it
  runs in the training process, so it must keep up with all workers together;
* worker: one worker's share (:class:`anyphone.data.module.PhoneDataset` on the sampled batches: FLAC decode,
  speed/volume perturbation, silence and noise augmentation, fbank), with one thread, as in a worker process;
* end to end: the training DataLoader with ``--num-workers 0`` (the sampler and the worker in one process).

Then it prints how many workers one GPU training the small model at 3000 s/s of audio would need.

Usage:
  python benchmarks/data_throughput.py                 # 10 minutes of audio
  python benchmarks/data_throughput.py --minutes 30 --target 3000
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from anyphone.data.module import PhoneDataModule
from anyphone.data.remote import write_index
from anyphone.data.shar import make_cut, write_shar
from anyphone.text.tokenizer import IpaTokenizer

TEXTS = ["aba", "kʰæt", "ʃiː", "mama", "doʊ", "tʃɛk", "nɪŋ", "pɑt", "sɔːɹi", "ʒəli"]


def make_corpus(out: Path, minutes: float, shard_size: int, seed: int = 0) -> float:
    """Speech-like audio (harmonics, noise bursts, pauses) as Shar; returns the seconds written."""
    rng = np.random.default_rng(seed)
    total, cuts, i = 0.0, [], 0
    while total < minutes * 60:
        dur = float(rng.uniform(2.0, 12.0))
        n = int(dur * 16000)
        t = np.arange(n) / 16000
        f0 = rng.uniform(90, 250)
        voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        envelope = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > -0.3).astype(np.float32)
        wave = 0.15 * voiced * envelope + 0.02 * rng.standard_normal(n)
        text = " ".join(TEXTS[j % len(TEXTS)] for j in range(i, i + int(dur * 2)))
        cuts.append(make_cut(f"utt{i:06d}", wave.astype(np.float32), text, "eng"))
        total += dur
        i += 1
    write_shar(cuts, out, shard_size=shard_size)
    write_index(out)
    return total


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Readers close a shard they stop early (the sampler peeks at the first cuts): a broken pipe here.
        pass


def data_module(spec: str, max_duration: float) -> PhoneDataModule:
    p = argparse.ArgumentParser()
    PhoneDataModule.add_arguments(p)
    # the training defaults (speed/volume perturbation, noise, silence), one process
    args = p.parse_args(["--train-shar", spec, "--num-workers", "0", "--max-duration", str(max_duration),
                         "--num-buckets", "10", "--num-cuts-for-bins-estimate", "500", "--drop-last", "false"])
    return PhoneDataModule(args, world_size=1, rank=0)


def measure(spec: str, tok: IpaTokenizer, max_duration: float) -> dict[str, float]:
    dm = data_module(spec, max_duration)
    # read: the sampler alone
    dl = dm.train_dataloader(tok)
    t0 = time.perf_counter()
    batches = list(dl.sampler)
    read_s = time.perf_counter() - t0
    # items are CutSets, or (cuts, epoch, index) tuples from a sampler that numbers its batches
    seconds = sum(c.duration for b in batches for c in (b[0] if isinstance(b, tuple) else b))
    if seconds == 0:
        raise SystemExit(f"{spec}: the sampler gave no batch; raise --minutes")
    # worker: FLAC decode, augmentation, fbank on those batches
    # (best of two passes: the machine may be shared; seconds as delivered, i.e. after speed perturbation)
    dataset = dl.dataset
    worker = 0.0
    for rep in range(2):
        dataset.reseed(1234 + rep)
        t0 = time.perf_counter()
        delivered = sum(float(dataset[b]["feature_lens"].sum()) / 100.0 for b in batches)
        worker = max(worker, delivered / (time.perf_counter() - t0))
    # end to end: the DataLoader, sampler and worker in this process
    dl = data_module(spec, max_duration).train_dataloader(tok)
    t0 = time.perf_counter()
    e2e_seconds = 0.0
    for batch in dl:
        e2e_seconds += float(batch["feature_lens"].sum()) / 100.0  # 100 fbank frames per second
    e2e_s = time.perf_counter() - t0
    return {"seconds": seconds, "read": seconds / read_s, "worker": worker, "e2e": e2e_seconds / e2e_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="Minutes of audio in the synthetic corpus.")
    ap.add_argument("--shard-size", type=int, default=40, help="Cuts per shard.")
    ap.add_argument("--max-duration", type=float, default=120.0, help="Seconds of audio per batch.")
    ap.add_argument("--target", type=float, default=3000.0,
                    help="Seconds of audio per second one GPU consumes (small model).")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread
    tok = IpaTokenizer.default()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corpus"
        t0 = time.perf_counter()
        total = make_corpus(folder, args.minutes, args.shard_size)
        n_shards = len(list(folder.glob("cuts.*.jsonl.gz")))
        print(f"corpus: {total / 60:.1f} min of audio in {n_shards} shards, written in "
              f"{time.perf_counter() - t0:.1f} s")
        handler = functools.partial(_Quiet, directory=str(Path(tmp)))
        httpd = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/corpus"
        rows = []
        try:
            for name, spec in (("local folder", str(folder)), ("loopback HTTP", url)):
                rows.append((name, measure(spec, tok, args.max_duration)))
        finally:
            httpd.shutdown()
            httpd.server_close()
    print()
    print("| source | read (sampler) s/s | one worker: decode+augment+fbank s/s | end to end, 0 workers s/s |")
    print("|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['read']:,.0f} | {r['worker']:,.0f} | {r['e2e']:,.0f} |")
    worker = min(r["worker"] for _, r in rows)
    need = math.ceil(args.target / worker)
    read = min(r["read"] for _, r in rows)
    print()
    print(f"workers for {args.target:,.0f} s/s (one GPU, small model): {need} "
          f"(at {worker:,.0f} s/s per worker on this CPU); the sampler reads {read:,.0f} s/s in the training "
          f"process{' (enough)' if read >= args.target else ' (NOT enough: it would be the bottleneck)'}")


if __name__ == "__main__":
    main()
