#!/usr/bin/env python3
"""Write the shard index of a Shar folder, so the folder can be served over plain HTTP.

    python local/index_shards.py data/shar/ipapack/train
    python local/index_shards.py data/shar/ipapack/train --no-count   # skip counting cuts (faster)

Plain HTTP has no directory listing, so a Shar folder served by a web server (or a CDN, or anything reached
through a ``pipe:`` command) needs an index beside its shards: ``cuts.index.json``, listing every field
(``cuts``, ``recording``, ...) with its shard files and their sizes in bytes, and the number of cuts per
shard. Then train straight from the server, nothing downloaded first::

    ./zipformer_crctc/train.py --train-shar https://my.host/ipapack/train ...

S3 buckets and Hugging Face dataset repos are listed by their own APIs and need no index (an index there does
no harm). The file is written atomically; run the script again after adding shards. The name starts with
``cuts.`` and has no ``.jsonl`` so that lhotse's ``CutSet.from_shar(in_dir=...)`` still reads the folder.

Exit status: 0 written, 2 the folder is not a Shar folder (one line says why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anyphone.data.remote import INDEX_NAME, write_index
from anyphone.fileio import OutputError


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="Shar folder (cuts.NNNNNN.jsonl.gz, recording.NNNNNN.tar, ...).")
    p.add_argument("--output", type=Path, default=None,
                   help=f"Where to write the index (default: DIR/{INDEX_NAME}, where readers look for it).")
    p.add_argument("--no-count", action="store_true",
                   help="Do not count the cuts of each shard (saves reading every cuts manifest).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        out, index = write_index(args.dir, args.output, count_cuts=not args.no_count)
    except (FileNotFoundError, ValueError, OutputError, OSError) as e:
        print(f"index_shards.py: error: {e}", file=sys.stderr)
        return 2
    cuts = index["fields"]["cuts"]
    n_cuts = sum(r.get("num_cuts", 0) for r in cuts)
    fields = ", ".join(sorted(index["fields"]))
    counted = f", {n_cuts} cuts" if not args.no_count else ""
    print(f"wrote {out}: {index['num_shards']} shards ({fields}){counted}, "
          f"{index['total_bytes'] / 1e9:.3f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
