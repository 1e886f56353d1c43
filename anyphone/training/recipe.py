"""What the recipes' train.py scripts call: one argument parser per model family, then the shared loop (decode.py's
command line is :mod:`anyphone.evaluation.recipe`).

A recipe names its own family (``zipformer_crctc/`` "crctc"); ``--family NAME`` picks another one of the
registry (:mod:`anyphone.families`) through the same scripts: the common flags, plus that family's own. The
exp dir's config.json records the family, so decode.py and export.py read it from there.
"""

from __future__ import annotations

import argparse
import sys

from anyphone.families import family_names, get_family
from anyphone.training.loop import add_training_arguments, run


def _family_for_flags(name: str, default: str):
    return get_family(name if name in family_names() else default)


def chosen_family(default: str, argv: list[str] | None, exp_dir_flags: bool = False) -> str:
    from anyphone.evaluation.recipe import chosen_family as chosen

    return chosen(default, argv, exp_dir_flags)


def get_train_parser(family: str, description: str | None = None, argv: list[str] | None = None
                     ) -> argparse.ArgumentParser:
    """train.py's flags: the loop's, the data's, ``--family`` (default ``family``) and the chosen family's own
    (``argv``'s ``--family``, else ``family``)."""
    from anyphone.data.module import PhoneDataModule
    from anyphone.evaluation.recipe import add_family_argument

    chosen = _family_for_flags(chosen_family(family, argv) if argv is not None else family, family)
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_training_arguments(parser)
    PhoneDataModule.add_arguments(parser)
    add_family_argument(parser, family)
    chosen.add_arguments(parser)
    return parser


def train_main(family: str, argv: list[str] | None = None, description: str | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = get_train_parser(family, description, argv)
    args = parser.parse_args(argv)
    run(args, get_family(args.family))
