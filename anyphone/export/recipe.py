"""The recipes' export command line: what ``zipformer_crctc/export.py`` and ``zipformer_transducer/export.py``
run.

:func:`get_export_parser` builds the icefall-style flags (checkpoint selection as decode.py, ``--tokens``,
``--output-dir``, ``--onnx`` / ``--fp16`` / ``--int8``, ``--opset``, ``--family`` and the family's model flags);
:func:`export_main` loads or averages the weights, writes ``pretrained.pt``, ``tokens.txt`` (and ``config.json``
when none is there) atomically, then the ONNX files through :func:`anyphone.export.onnx.export_model`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from anyphone.export.onnx import export_model
from anyphone.families import get_family
from anyphone.families.base import ModelFamily
from anyphone.fileio import atomic_write, atomic_write_bytes

__all__ = ["export_main", "get_export_parser"]

log = logging.getLogger("anyphone.export")


def get_export_parser(family: str, description: str | None = None, argv: list[str] | None = None):
    """icefall-style export flags, ``--family`` and the model flags of the family ``argv`` names (``--family``,
    else the exp dir's config.json, else ``family``, the recipe's); the model flags are optional: the exp dir's
    config.json describes the model."""
    import argparse

    from anyphone.evaluation.recipe import add_checkpoint_arguments, add_family_argument, chosen_family
    from anyphone.families import family_names
    from anyphone.utils import str2bool

    name = chosen_family(family, argv, exp_dir_flags=True) if argv is not None else family
    chosen = get_family(name if name in family_names() else family)

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(p.add_argument_group("checkpoint (icefall names)"), verb="Export")
    g = p.add_argument_group("export")
    g.add_argument("--tokens", type=Path, default=None,
                   help="tokens.txt (default: <lang-dir>/tokens.txt, else the packaged ZIPA table)")
    g.add_argument("--lang-dir", type=Path, default=Path("ipa_simplified"))
    g.add_argument("--output-dir", type=Path, default=None, help="Default: --exp-dir.")
    g.add_argument("--onnx", type=str2bool, default=True, help="Write ONNX (fp32) models.")
    g.add_argument("--fp16", type=str2bool, default=False, help="Also write .fp16.onnx (fp16 weights, fp32 I/O).")
    g.add_argument("--int8", type=str2bool, default=False, help="Also write .int8.onnx (dynamic quantisation).")
    g.add_argument("--opset", type=int, default=18)
    add_family_argument(g, None)
    chosen.add_model_arguments(p)
    return p


def _tokens_file(args) -> Path:
    if args.tokens is not None:
        if not Path(args.tokens).is_file():
            raise SystemExit(f"--tokens {args.tokens}: file not found")
        return Path(args.tokens)
    cand = Path(args.lang_dir) / "tokens.txt"
    if cand.is_file():
        return cand
    packaged = Path(__file__).resolve().parents[1] / "text" / "tokens.txt"
    log.warning("%s not found; using the packaged ZIPA token table %s", cand, packaged)
    return packaged


def _count_tokens(path: Path) -> int:
    return sum(1 for line in open(path, encoding="utf-8") if line.strip())


def _label(args) -> str:
    if args.checkpoint is not None:
        return Path(args.checkpoint).stem
    base = f"iter-{args.iter}" if args.iter > 0 else f"epoch-{args.epoch}"
    return f"{base}-avg-{args.avg}"


def export_main(args, family: str | ModelFamily | None = None) -> dict[str, list[Path]]:
    """Load/average weights, write ``pretrained.pt`` (plain state_dict), tokens.txt and the ONNX files.

    The model is the one the exp dir's config.json (or the checkpoint's tensors) describes, of the family they
    name (``family``: the recipe's, used when nothing else names one); a transducer's joint CTC head, if it has
    one, is loaded and not exported."""
    from anyphone.evaluation.recipe import model_config_for, resolve_family, select_decoding_weights
    from anyphone.weights.checkpoint import CheckpointMismatchError, load_model_weights
    from anyphone.weights.expdir import CONFIG_FILE, write_config

    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    tokens = _tokens_file(args)
    sd, source = select_decoding_weights(args)
    fam = resolve_family(args, family, sd)
    cfg, options = model_config_for(args, fam, sd)
    model: nn.Module = fam.build(cfg.replace(vocab_size=_count_tokens(tokens)), **options)
    try:
        load_model_weights(model, sd, source)
    except CheckpointMismatchError as e:  # shapes were checked: the token table is the other size
        raise SystemExit(f"{e}; {tokens} must be the token table it was trained with") from None
    model.eval()
    out_dir = Path(args.output_dir or args.exp_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "pretrained.pt", "wb") as f:
        torch.save(model.state_dict(), f)
    if tokens.resolve() != (out_dir / "tokens.txt").resolve():
        atomic_write_bytes(out_dir / "tokens.txt", tokens.read_bytes())
    if not (out_dir / CONFIG_FILE).is_file():  # pretrained.pt describes itself too (load_model, finetune)
        write_config(out_dir, model=model.cfg.to_dict(), family=fam.name, tokens="tokens.txt")
    log.info("Loaded %s %s (%s parameters); wrote %s", fam.name, source,
             f"{sum(p.numel() for p in model.parameters()):,}", out_dir / "pretrained.pt")
    written: dict[str, list[Path]] = {}
    if not args.onnx:
        return written
    written = export_model(model, fam, out_dir, _label(args), fp16=args.fp16, int8=args.int8, opset=args.opset,
                           extra_meta={"checkpoint": str(source)})
    for part, paths in written.items():
        for p in paths:
            log.info("%s: %s (%.1f MB)", part, p, p.stat().st_size / 1e6)
    return written
