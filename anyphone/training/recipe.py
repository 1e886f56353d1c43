"""What the recipes' train.py and decode.py scripts call: one argument parser per task, then the shared loop
or the decode service (:mod:`anyphone.decoding.run`)."""

from __future__ import annotations

import argparse

from anyphone.training.loop import add_training_arguments, run
from anyphone.training.tasks import get_task


def get_train_parser(task_name: str, description: str | None = None) -> argparse.ArgumentParser:
    from anyphone.data.module import PhoneDataModule
    from anyphone.models.presets import add_model_arguments

    task = get_task(task_name)
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_training_arguments(parser)
    add_model_arguments(parser)
    PhoneDataModule.add_arguments(parser)
    task.add_arguments(parser)
    return parser


def train_main(task_name: str, argv: list[str] | None = None, description: str | None = None) -> None:
    parser = get_train_parser(task_name, description)
    args = parser.parse_args(argv)
    run(args, get_task(task_name))


def get_decode_parser(task_name: str, description: str | None = None) -> argparse.ArgumentParser:
    from anyphone.data.module import PhoneDataModule
    from anyphone.decoding.run import add_decode_arguments
    from anyphone.models.presets import add_model_arguments

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decode_arguments(parser)
    add_model_arguments(parser)
    PhoneDataModule.add_arguments(parser)
    get_task(task_name).add_arguments(parser)
    return parser


def decode_main_cli(task_name: str, argv: list[str] | None = None, description: str | None = None):
    from anyphone.decoding.run import decode_main

    args = get_decode_parser(task_name, description).parse_args(argv)
    return decode_main(args, get_task(task_name))
