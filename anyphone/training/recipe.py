"""What the recipes' train.py scripts call: one argument parser per task, then the shared loop."""

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
