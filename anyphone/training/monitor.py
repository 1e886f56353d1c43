"""Training logs people can read and look at: console lines, metrics.jsonl, TensorBoard, wandb, a PNG of curves."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("anyphone.train")


def setup_logging(exp_dir: Path, rank: int, name: str = "log-train") -> None:
    """Log to the console and to exp_dir/log/<name>-<rank>.txt (icefall's layout)."""
    log_dir = exp_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank}] %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fh = logging.FileHandler(log_dir / f"{name}-{rank}.txt")
    fh.setFormatter(fmt)
    root.addHandler(fh)
    if rank == 0:
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        root.addHandler(sh)


class Monitor:
    """Writes each logged scalar to metrics.jsonl, TensorBoard and (optionally) wandb; draws curves on demand."""

    def __init__(self, exp_dir: Path, enabled: bool, tensorboard: bool, wandb_project: str | None, config: dict):
        self.exp_dir = exp_dir
        self.enabled = enabled
        self.metrics_path = exp_dir / "metrics.jsonl"
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(exp_dir / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError as e:  # optional extra
                raise SystemExit("--wandb True needs the wandb extra: pip install 'anyphone[wandb]'") from e
            # Offline unless the user configured an online run (WANDB_MODE / wandb login).
            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = wandb.init(project=wandb_project, dir=str(exp_dir), config=config)

    def log(self, split: str, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"split": split, "batch": step, **{k: float(v) for k, v in values.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{split}/{k}": v for k, v in values.items()}, step=step)

    def plot(self) -> Path | None:
        """Draw exp_dir/training_curves.png from metrics.jsonl (train and valid loss, lr, valid error rate)."""
        if not self.enabled or not self.metrics_path.exists():
            return None
        return plot_training_curves(self.metrics_path, self.exp_dir / "training_curves.png")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def plot_training_curves(metrics_path: Path, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    with open(metrics_path) as f:
        records = [json.loads(line) for line in f]
    for rec in records:
        split, step = rec.pop("split"), rec.pop("batch")
        for k, v in rec.items():
            xs, ys = series.setdefault((split, k), ([], []))
            xs.append(step)
            ys.append(v)
    panels = [
        ("loss per frame", [("train", "loss"), ("valid", "loss")]),
        ("loss terms (train)", [("train", k) for (s, k) in series if s == "train" and k.endswith("_loss")]),
        ("valid error rate (%)", [("valid", "err_rate")]),
        ("learning rate", [("train", "lr")]),
    ]
    panels = [(t, [k for k in keys if k in series]) for t, keys in panels]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1), 3.4))
    axes = [axes] if len(panels) <= 1 else list(axes)
    for ax, (title, keys) in zip(axes, panels):
        for split, k in keys:
            xs, ys = series[(split, k)]
            ax.plot(xs, ys, marker="o" if split == "valid" else None, ms=3, label=f"{split} {k}")
        ax.set_title(title)
        ax.set_xlabel("batch")
        if title.startswith("loss"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
