#!/usr/bin/env python3
"""Split a labelled Shar corpus into a labelled part and an "unlabelled" part whose transcripts are removed,
for a noisy-student experiment where the truth is known (``zipformer_crctc/noisy_student.sh``).

    python local/split_labelled.py data/shar/embedded/train data/shar/ns --labelled-fraction 0.333

writes ``data/shar/ns/labelled`` (cuts as they were, ``custom["label_kind"] = "labelled"``) and
``data/shar/ns/unlabelled`` (the other cuts, empty transcripts, ``custom["label_kind"] = "unlabelled"``; the
language is kept, as it usually is known for untranscribed recordings). Which part a cut goes to is a fixed
function of its id and ``--seed`` (a hash), so the split is the same on every machine and does not depend on
the shard layout. Both parts are written beside the output and swapped in whole (a stopped run leaves nothing
half-written). The true transcripts of the unlabelled part stay in the input folder only: pass it to
``local/pseudo_label.py --reference-shar`` to measure the pseudo-labels against them.

Exit status: 0 done, 2 bad input or options (one line says why).
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="Labelled Shar folder (e.g. data/shar/embedded/train).")
    p.add_argument("output", type=Path, help="Folder for labelled/ and unlabelled/.")
    p.add_argument("--labelled-fraction", type=float, default=1 / 3,
                   help="Share of the cuts that keep their transcripts.")
    p.add_argument("--seed", type=int, default=0, help="Changes which cuts are labelled.")
    p.add_argument("--shard-size", type=int, default=1000, help="Cuts per output shard.")
    return p


def is_labelled(cut_id: str, fraction: float, seed: int) -> bool:
    """True for about ``fraction`` of the ids: a CRC32 of (seed, id) compared with the fraction of 2**32."""
    return zlib.crc32(f"{seed}:{cut_id}".encode()) < fraction * 2**32


def split(input_dir: str, output: Path, fraction: float, seed: int = 0, shard_size: int = 1000) -> dict[str, int]:
    """Write ``output/labelled`` and ``output/unlabelled``; returns the cut counts of each."""
    from lhotse.utils import fastcopy

    from anyphone.data.shar import DataError, _check_out_dir, _write_shar_replacing, open_shar

    if not 0.0 < fraction < 1.0:
        raise DataError(f"--labelled-fraction {fraction}: expected a share strictly between 0 and 1")
    counts = {"labelled": 0, "unlabelled": 0}
    reader_fields = ("shard_origin", "shar_epoch")  # set by the Shar reader: not data to write back

    def custom(cut, kind: str) -> dict:
        return {**{k: v for k, v in (cut.custom or {}).items() if k not in reader_fields}, "label_kind": kind}

    def part(kind: str):
        for cut in open_shar(input_dir):
            if is_labelled(cut.id, fraction, seed) != (kind == "labelled"):
                continue
            counts[kind] += 1
            if kind == "labelled":
                yield fastcopy(cut, custom=custom(cut, "labelled"))
            else:
                sups = [fastcopy(s, text="") for s in cut.supervisions]
                yield fastcopy(cut, supervisions=sups, custom=custom(cut, "unlabelled"))

    for kind in ("labelled", "unlabelled"):
        _check_out_dir(output / kind)
    for kind in ("labelled", "unlabelled"):
        if _write_shar_replacing(part(kind), output / kind, shard_size) == 0:
            raise DataError(f"{input_dir}: no cut went to the {kind} part; choose another --labelled-fraction")
    return counts


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    from anyphone.data.shar import DataError

    try:
        counts = split(args.input, args.output, args.labelled_fraction, args.seed, args.shard_size)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"split_labelled.py: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{args.output}: labelled {counts['labelled']} cuts, unlabelled {counts['unlabelled']} cuts "
          f"(transcripts removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
