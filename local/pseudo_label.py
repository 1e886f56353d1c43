#!/usr/bin/env python3
"""Pseudo-label unlabelled Shar with a CTC teacher, for noisy-student training (ZIPA's Zipa-Cr-Ns models).

    # a teacher trained here (exp dir, icefall's --iter/--avg), on CPU or the GPU
    python local/pseudo_label.py --teacher zipformer_crctc/exp-teacher --iter 600 --avg 1 \\
      --input data/shar/ns/unlabelled --output data/shar/ns/pseudo --min-confidence 0.6

    # a published model or a .pth; a remote source (http(s)://, s3://, hf://, pipe:)
    python local/pseudo_label.py --teacher zipa-cr-large-500k --input hf://datasets/me/speech/shar@main \\
      --output data/shar/pseudo

    # one process per GPU (each takes every WORLD_SIZE-th shard; run the same command again to resume)
    torchrun --nproc-per-node 8 local/pseudo_label.py --teacher ... --input ... --output ...

Writes ``--output`` as Shar: input shard i becomes output shard i, its cuts with the teacher's IPA as their
transcript and ``custom`` fields ``label_kind`` ("pseudo", or "unlabelled" for a rejected label kept for the
consistency term), ``pseudo_confidence`` and ``teacher``; the definitions are in
``anyphone/training/pseudo_label.py``. The filters (empty output, ZIPA's length rule, ``--min-confidence``)
count what they reject, and the counts go to ``<output>/pseudo_label_report.json`` and the last lines printed.
An interrupted run resumes: the same command skips the shards already done.

Train the student on both (``zipformer_crctc/noisy_student.sh`` runs the whole method):
    ./zipformer_crctc/train.py --train-shar data/shar/ns/labelled:1 --train-shar data/shar/ns/pseudo:2 \\
      --use-unsup-cr-ctc 1 --unsup-cr-ctc-loss-scale 0.5 ...

Exit status: 0 done, 1 some shards could not be read (a rerun retries them), 2 bad input, options or teacher.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def get_parser() -> argparse.ArgumentParser:
    from anyphone.utils import str2bool

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True,
                   help="The teacher: a recipe exp dir, a .pt/.pth file or a published model name (CTC models).")
    p.add_argument("--iter", type=int, default=0, help="Exp dir: checkpoint-N.pt (with --avg).")
    p.add_argument("--epoch", type=int, default=0, help="Exp dir: epoch-N.pt (with --avg).")
    p.add_argument("--avg", type=int, default=1, help="Exp dir: checkpoints averaged, ending at --iter/--epoch.")
    p.add_argument("--use-averaged-model", type=str2bool, default=True,
                   help="Exp dir: average with the running average kept in the checkpoints (needs --avg > 1).")
    p.add_argument("--tokens", type=Path, default=None, help="The teacher's tokens.txt (default: found beside it).")
    p.add_argument("--input", required=True, help="Unlabelled Shar: a folder or a remote source.")
    p.add_argument("--output", type=Path, required=True, help="Shar folder for the pseudo-labelled cuts.")
    p.add_argument("--decoding-method", default="ctc-greedy-search",
                   choices=["ctc-greedy-search", "ctc-prefix-beam-search"])
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--blank-penalty", type=float, default=0.0,
                   help="Subtracted from blank's log-probability before the search (not from the confidence).")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="Reject labels whose confidence (per-token geometric mean of the label's CTC probability, "
                   "in [0, 1]) is below this.")
    p.add_argument("--length-ratio", type=float, default=0.85,
                   help="ZIPA's length rule: reject a label that needs more than this share of the teacher's "
                   "output frames (tokens plus a blank between repeats).")
    p.add_argument("--keep-rejected", type=str2bool, default=True,
                   help="Write rejected cuts as unlabelled (consistency term only) instead of leaving them out.")
    p.add_argument("--reference-shar", default=None,
                   help="Shar folder with the true transcripts of the same cut ids (an experiment): report the "
                   "PER of kept and rejected labels. The references are never written.")
    p.add_argument("--max-duration", type=float, default=200.0, help="Seconds of padded audio per teacher batch.")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU, else CPU), cpu or cuda:N.")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    p.add_argument("--trust-data-commands", type=str2bool, default=False,
                   help="Allow cuts whose audio is loaded by running a command (refused otherwise).")
    p.add_argument("--progress", type=str2bool, default=True, help="Show a progress bar (rank 0).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    import torch

    from anyphone.data.shar import DataError
    from anyphone.training.pseudo_label import (
        PseudoLabelConfig,
        dist_from_env,
        pseudo_label_shar,
        read_shar_texts,
    )

    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    rank, world_size, local_rank = dist_from_env()
    start = time.time()
    try:
        cfg = PseudoLabelConfig(
            teacher=args.teacher, iter=args.iter, epoch=args.epoch, avg=args.avg,
            use_averaged_model=args.use_averaged_model, tokens=str(args.tokens) if args.tokens else None,
            device=args.device, decoding_method=args.decoding_method, beam_size=args.beam_size,
            blank_penalty=args.blank_penalty, max_duration=args.max_duration, min_confidence=args.min_confidence,
            length_ratio=args.length_ratio, keep_rejected=args.keep_rejected,
            trust_commands=args.trust_data_commands, rank=rank, world_size=world_size, progress=args.progress)
        refs = read_shar_texts(args.reference_shar) if args.reference_shar else None
        report = pseudo_label_shar(args.input, args.output, cfg, references=refs, local_rank=local_rank)
    except (DataError, ValueError, FileNotFoundError) as e:
        text = str(e).strip().splitlines()
        print(f"pseudo_label.py: {text[0] if text else type(e).__name__}", file=sys.stderr)
        return 2
    wall = time.time() - start
    who = f"rank {rank}/{world_size}: " if world_size > 1 else ""
    print(f"{who}{len(report.done_now)} shard(s) labelled in {wall:.0f} s"
          + (f", {len(report.done_before)} done before" if report.done_before else ""))
    if report.complete:
        print(report.summary())
        print(f"report: {args.output / 'pseudo_label_report.json'}")
    else:
        print(f"{who}other shards are still being labelled (or failed); the report is written when all are done")
    for i, why in sorted(report.failed.items()):
        print(f"shard {i}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
