#!/usr/bin/env python3
"""Convert your own phone-labelled corpus to Shar for anyphone training.

Allosaurus/Kaldi-style directory::

    python local/prepare_user_corpus.py --data-dir /path/to/dir --out-dir data/shar/mycorpus

  ``wave`` (or ``wav.scp``): ``utt_id /path/to/audio`` (wav/flac/ogg/...; relative paths are
  relative to the directory); ``text``: ``utt_id p h o n e s`` (IPA, spaces allowed);
  optional ``lang`` (or ``utt2lang``): ``utt_id language``.

lhotse manifests::

    python local/prepare_user_corpus.py --recordings recordings.jsonl.gz \
        --supervisions supervisions.jsonl.gz --out-dir data/shar/mycorpus

Audio becomes 16 kHz mono FLAC; transcripts are normalised to ZIPA's IPA alphabet. Bad
utterances (missing/empty/corrupt audio, out-of-inventory symbols, no audio or no transcript)
are skipped with a one-line warning each and counted in the final summary, and so are utterance
ids given more than once (never last-one-wins) and ids with a space. Audio that would be loaded by
running a command (a Kaldi ``cmd |`` pipe, an lhotse ``"type": "command"`` or ``pipe:`` source, a
``.sph`` file decoded with sph2pipe) is refused; ``--trust-data-commands 1`` allows the lhotse ones
(Kaldi pipes stay refused).

``--out-dir`` is replaced whole: the shards are written into a temporary folder beside it, which
then takes its place, so the shards of an earlier run never mix with the new ones and an
interrupted run leaves the old folder as it was. A folder that holds anything but Shar shards is
refused. Exit status: 0 when something was written, 1 when nothing was, 2 on unusable input (e.g.
an empty directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from anyphone.data.shar import kaldi_dir_to_shar, lhotse_manifests_to_shar
from anyphone.fileio import atomic_write_text
from anyphone.utils import str2bool


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input (one of)")
    src.add_argument("--data-dir", help="Kaldi/Allosaurus-style directory with wave (or wav.scp) and text.")
    src.add_argument("--recordings", help="lhotse recordings manifest (jsonl[.gz]).")
    src.add_argument("--supervisions", help="lhotse supervisions manifest (jsonl[.gz]).")
    p.add_argument("--out-dir", required=True, help="Output Shar directory.")
    p.add_argument("--shard-size", type=int, default=1000, help="Utterances per shard.")
    p.add_argument("--language", default="", help="Language for utterances without one.")
    p.add_argument("--remove-diacritics", type=str2bool, default=False,
                   help="Strip diacritics now (usually better left to training's --remove-diacritics).")
    p.add_argument("--on-unknown", choices=["skip", "drop"], default="skip",
                   help="Utterances with symbols outside the IPA inventory: skip them (default) or keep "
                   "them without those symbols.")
    p.add_argument("--trust-data-commands", type=str2bool, default=False,
                   help="Run the commands lhotse manifests ask for to load audio ('command' and 'pipe:' "
                   "sources, sph2pipe for .sph files). Only for data you trust; Kaldi pipes stay refused.")
    p.add_argument("--report", default=None, help="Optional JSON file for the counts.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    common = {"shard_size": args.shard_size, "language": args.language,
              "remove_diacritics": args.remove_diacritics, "on_unknown": args.on_unknown,
              "trust_commands": args.trust_data_commands}
    try:
        if args.data_dir:
            if args.recordings or args.supervisions:
                p.error("give either --data-dir or --recordings/--supervisions, not both")
            report = kaldi_dir_to_shar(args.data_dir, args.out_dir, **common)
        elif args.recordings and args.supervisions:
            report = lhotse_manifests_to_shar(args.recordings, args.supervisions, args.out_dir, **common)
        else:
            p.error("give --data-dir, or both --recordings and --supervisions")
    except (FileNotFoundError, ValueError) as e:
        print(f"prepare_user_corpus: error: {e}", file=sys.stderr)
        return 2
    if args.report:
        atomic_write_text(args.report, json.dumps(
            {"written": report.written, "skipped": report.skipped, "seconds": report.seconds,
             "problems": report.counts(), "unknown_symbols": dict(report.unknown_symbols)},
            ensure_ascii=False, indent=1))
    return 0 if report.written > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
