#!/usr/bin/env python3
"""Recognise every audio file of a directory with an exported ONNX model (no torch needed).

Usage:
  local/onnx_batch_decode.py wavs/ --model-type ctc --model-path exp/model-iter-12000-avg-4.int8.onnx \
    --tokens exp/tokens.txt --batch-size 8
  local/onnx_batch_decode.py wavs/ --model-type transducer --model-path exp --suffix -epoch-30-avg-5.onnx
  # or point --model-path at the encoder file; decoder/joiner are found beside it:
  local/onnx_batch_decode.py wavs/ --model-type transducer --model-path exp/encoder-epoch-30-avg-5.int8.onnx

Prints one line per file, ``name<TAB>phones``, sorted by name (the path relative to DIR, without the
extension; escaped with anyphone.inference.audio.escape_name, so a tab, newline or non-UTF-8 byte in a name
cannot break the line).  Files are batched in that order; as in ZIPA's batched inference, items are zero-padded
to the longest wave of their batch, which can change the last frames of the shorter ones (use --batch-size 1 for
padding-free results).  Audio of any rate/channel count is read with soundfile and converted to 16 kHz mono.

A file that cannot be read (missing, empty, corrupt, implausible sample rate, NaN samples, a missing line of a
list file, a dangling link) gets one line on stderr and the others are still decoded; the failures are listed
at the end and the exit status is 1. A model that cannot be loaded (e.g. a corrupt .onnx) is one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anyphone.inference.audio import AudioError, escape_name, expand_inputs, load_audio
from anyphone.inference.onnx_runtime import OnnxCtcRecognizer, OnnxTransducerRecognizer


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="Folder of audio files (or a list file, one path per line)")
    p.add_argument("--model-path", type=Path, required=True,
                   help="ctc: the .onnx file; transducer: the folder (with --suffix) or the encoder file")
    p.add_argument("--model-type", choices=["ctc", "transducer"], required=True)
    p.add_argument("--tokens", type=Path, default=None, help="tokens.txt (default: next to the model)")
    p.add_argument("--suffix", type=str, default=".onnx",
                   help="transducer: encoder<suffix>, decoder<suffix>, joiner<suffix> (default .onnx)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--recursive", action="store_true", help="Also read sub-folders")
    p.add_argument("--num-threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
    return p


def build_recognizer(args: argparse.Namespace):
    threads = args.num_threads or None
    if args.model_type == "ctc":
        return OnnxCtcRecognizer(args.model_path, args.tokens, provider=args.provider, num_threads=threads)
    model_dir, suffix = args.model_path, args.suffix
    if model_dir.is_file():
        name = model_dir.name
        if not name.startswith("encoder"):
            raise SystemExit(f"--model-path {model_dir}: expected a folder or an encoder*.onnx file")
        model_dir, suffix = model_dir.parent, name[len("encoder"):]
    return OnnxTransducerRecognizer(model_dir, args.tokens, suffix=suffix, provider=args.provider,
                                    num_threads=threads)


def _error(msg: str) -> None:
    print(f"onnx_batch_decode: error: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size {args.batch_size}: expected >= 1")
    failed: list[AudioError] = []
    try:
        files = expand_inputs(args.dir, recursive=args.recursive, failures=failed)
    except AudioError as e:
        raise SystemExit(str(e)) from None
    root = args.dir if args.dir.is_dir() else None

    def name_of(p: Path) -> str:
        rel = p.relative_to(root) if root is not None else Path(p.name)
        return rel.with_suffix("").as_posix()

    items = sorted(((name_of(p), p) for p in files), key=lambda t: t[0])
    try:
        rec = build_recognizer(args)
    except (ValueError, OSError) as e:  # a corrupt or missing model, tokens that do not fit it
        _error(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return 2
    failures = [str(e) for e in failed]
    for msg in failures:
        _error(msg)
    for start in range(0, len(items), args.batch_size):
        names, waves = [], []
        for name, path in items[start:start + args.batch_size]:
            try:
                wave, _ = load_audio(path, 16000)
            except AudioError as e:  # this file only: the rest of the batch and the run go on
                failures.append(str(e))
                _error(failures[-1])
                continue
            except MemoryError:
                failures.append(f"{escape_name(path)}: not enough memory to read it")
                _error(failures[-1])
                continue
            names.append(name)
            waves.append(wave)
        if waves:
            for name, text in zip(names, rec.recognize(waves)):
                print(f"{escape_name(name)}\t{text}", flush=True)
    if failures:
        print(f"onnx_batch_decode: {len(failures)} of {len(items) + len(failed)} file(s) failed:", file=sys.stderr)
        for msg in failures:
            print(f"  {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
