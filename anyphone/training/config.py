"""TrainingConfig: the training loop's own knobs as a typed dataclass (lhotse-style ``to_dict`` / ``from_dict``).

``anyphone.training.loop.add_training_arguments`` takes its defaults from here, so ``TrainingConfig()`` and a
recipe parser's ``parse_args([])`` agree field by field. The loop builds one with :meth:`TrainingConfig.from_args`
from the parsed flags at its door and reads its knobs from it; the task (model and loss flags) and the data
module (:class:`anyphone.data.config.DataConfig`) have their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyphone.data.config import config_from_args, config_from_dict, normalise, to_plain

__all__ = ["TrainingConfig"]


@dataclass(frozen=True)
class TrainingConfig:
    """What the training loop reads: layout, resume, schedule, budget, checkpoints, precision and logging.

    Each field is the flag of the same name (``save_every_n`` is ``--save-every-n``; the help texts are in
    ``add_training_arguments``). Two fields are data flags the loop also needs: ``seed`` (``--seed``, which
    seeds the model's initialisation and each step's randomness) and ``max_duration`` (``--max-duration``:
    the Zipformer schedules count batches of ``ref_duration`` seconds, so a batch of ``max_duration`` seconds
    counts ``max_duration * world_size * accum_grad / ref_duration`` of them).
    """

    # layout
    world_size: int = 1
    master_port: int = 12354
    exp_dir: Path = Path("exp")
    lang_dir: Path = Path("ipa_simplified")
    device: str = "auto"
    num_threads: int = 0
    # resume and initialisation
    num_epochs: int = 30
    start_epoch: int = 1
    start_batch: int = 0
    auto_resume: bool = True
    init_from: Path | None = None
    seed: int = 42
    # optimizer and schedules (Eden)
    base_lr: float = 0.045
    lr_batches: float = 7500
    lr_epochs: float = 3.5
    warmup_batches: float = 500.0
    ref_duration: float = 600
    max_duration: float = 600.0
    accum_grad: int = 1
    # budget
    max_batches: int = 0
    max_minutes: float = 0.0
    cooldown_fraction: float = 0.0
    max_bad_batches: int = 20
    # precision
    use_fp16: bool = False
    use_bf16: bool = False
    scan_pessimistic_batches: bool = True
    # averaging, checkpoints, validation
    average_period: int = 200
    save_every_n: int = 4000
    keep_last_k: int = 30
    valid_interval: int = 3000
    valid_every_epoch: bool = True
    keep_best: bool = True
    # logging
    log_interval: int = 50
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "anyphone"

    def __post_init__(self) -> None:
        normalise(self, "training config")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> TrainingConfig:
        """A config from :meth:`to_dict`'s output; unknown keys or bad values raise one ValueError line (starting
        with ``where``, e.g. a file name, when given)."""
        return config_from_dict(cls, data, "training config", where)

    @classmethod
    def from_args(cls, namespace: Any) -> TrainingConfig:
        """The training flags of a parsed Namespace (see :func:`anyphone.data.config.config_from_args`)."""
        return config_from_args(cls, namespace)
