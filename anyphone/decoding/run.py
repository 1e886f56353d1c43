"""The decode service behind the recipes' decode.py: pick and average checkpoints, decode test sets, score.

Writes, icefall style, into <exp-dir>/<decoding-method>/:
  recogs-<test-set>-<suffix>.txt   reference and hypothesis per cut
  errs-<test-set>-<suffix>.txt     PER with insertions/deletions/substitutions, alignments, top confusions
  per-language-<test-set>-<suffix>.txt
  per-summary-<suffix>.txt         PER and PFER of every test set
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
from pathlib import Path

import torch
from torch import nn

from anyphone.training.loop import str2bool

log = logging.getLogger("anyphone.decode")


def _finite_float(value: str) -> float:
    try:
        out = float(value)
    except ValueError:
        out = math.nan
    if not math.isfinite(out):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return out


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("decoding (icefall names)")
    g.add_argument("--exp-dir", type=Path, default=Path("exp"))
    g.add_argument("--lang-dir", type=Path, default=Path("ipa_simplified"))
    g.add_argument("--epoch", type=int, default=0, help="Decode epoch-N.pt (with --avg). Ignored if --iter > 0.")
    g.add_argument("--iter", type=int, default=0, help="Decode checkpoint-N.pt (with --avg).")
    g.add_argument("--avg", type=int, default=1, help="Number of checkpoints to average, ending at --iter/--epoch.")
    g.add_argument(
        "--use-averaged-model",
        type=str2bool,
        default=True,
        help="Average with the running averaged model kept in checkpoints (needs the checkpoint --avg steps "
        "before the last one), which is better than averaging the raw weights.",
    )
    g.add_argument("--checkpoint", type=Path, default=None,
                   help="Decode this file directly (a checkpoint or a plain state_dict such as a ZIPA .pth).")
    g.add_argument("--decoding-method", type=str, default=None,
                   help="crctc: ctc-greedy-search | ctc-prefix-beam-search; "
                   "transducer: greedy_search | modified_beam_search (default: the greedy one)")
    g.add_argument("--beam-size", type=int, default=4)
    g.add_argument("--max-sym-per-frame", type=int, default=1)
    g.add_argument("--blank-penalty", type=_finite_float, default=0.0,
                   help="Subtracted from the blank's log-probability (CTC) or logit (transducer) before the "
                        "search; > 0 emits more phones, against deletions. Tune it on a dev set.")
    g.add_argument("--pfer", type=str2bool, default=True, help="Also compute PanPhon feature error rates.")
    g.add_argument("--device", type=str, default="auto")
    g.add_argument("--num-threads", type=int, default=0)


def checkpoint_suffix(args: argparse.Namespace) -> str:
    if args.checkpoint is not None:
        return Path(args.checkpoint).stem
    base = f"iter-{args.iter}" if args.iter > 0 else f"epoch-{args.epoch}"
    return f"{base}-avg-{args.avg}" + ("-use-averaged-model" if args.use_averaged_model else "")


def load_decoding_weights(args: argparse.Namespace, model: nn.Module) -> str:
    """Load the weights that --iter/--epoch/--avg/--use-averaged-model/--checkpoint name; returns a label.

    Every problem ends the program with one line (SystemExit) naming the file: a checkpoint that is missing,
    corrupt or holds pickled objects other than tensors (refused, never unpickled), or weights of another shape
    than the model flags give (with the first tensor that differs and the --model-size they look like).
    """
    from anyphone.inference.hub import UnsafeCheckpointError
    from anyphone.training.checkpoint import CheckpointMismatchError

    try:
        return _load_decoding_weights(args, model)
    except CheckpointMismatchError as e:
        raise SystemExit(f"{e}; {_size_hint(getattr(e, 'state_dict', None))}") from None
    except (UnsafeCheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(_first_line(e)) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError, IndexError) as e:
        # an averaging helper failed on a file it loaded: name the first one that does not load on its own
        raise SystemExit(_first_line(_find_unreadable(args, e))) from None


def _first_line(e: BaseException) -> str:
    text = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _size_hint(state_dict) -> str:
    """What to pass for weights that do not fit the model flags: the size preset they match, if any."""
    if state_dict is not None:
        try:
            from anyphone.inference.api import config_from_state_dict

            _, cfg, _ = config_from_state_dict(state_dict)
            if cfg.name in ("tiny", "small", "large"):
                return f"they are a {cfg.name} model: pass --model-size {cfg.name}"
        except (ValueError, KeyError, RuntimeError, AssertionError):
            pass  # no preset fits: the generic advice below
    return "pass the model flags it was trained with (--model-size, --encoder-dim, ...)"


def _candidates(args: argparse.Namespace) -> list[Path]:
    """The checkpoint files --iter/--epoch (with --avg) may read, newest first."""
    from anyphone.training import checkpoint as ckpt

    exp = Path(args.exp_dir)
    if args.iter > 0:
        return [p for p in ckpt.find_checkpoints(exp) if _batch_of(p) <= args.iter]
    numbers = range(args.epoch, max(args.epoch - args.avg, 1) - 1, -1)  # --use-averaged-model reads epoch - avg
    return [exp / f"epoch-{i}.pt" for i in numbers if (exp / f"epoch-{i}.pt").is_file()]


def _find_unreadable(args: argparse.Namespace, e: BaseException) -> BaseException:
    from anyphone.inference.hub import UnsafeCheckpointError, load_state_dict

    paths = [Path(args.checkpoint)] if args.checkpoint is not None else _candidates(args)
    for p in paths:
        try:
            load_state_dict(p)
        except (UnsafeCheckpointError, ValueError, FileNotFoundError) as problem:
            return problem
    where = args.checkpoint if args.checkpoint is not None else args.exp_dir
    return ValueError(f"{where}: cannot load the checkpoints ({_first_line(e)})")


def _load_decoding_weights(args: argparse.Namespace, model: nn.Module) -> str:
    from anyphone.training import checkpoint as ckpt

    if args.checkpoint is not None:
        from anyphone.inference.hub import load_state_dict

        sd = load_state_dict(args.checkpoint)
        if isinstance(sd.get("model"), dict):
            sd = sd["model"]
        _load_weights(model, sd, args.checkpoint)
        return str(args.checkpoint)
    exp = Path(args.exp_dir)
    if args.iter > 0:
        names = [p for p in ckpt.find_checkpoints(exp) if _batch_of(p) <= args.iter]
        if not names or _batch_of(names[0]) != args.iter:
            raise SystemExit(f"--iter {args.iter}: {exp / f'checkpoint-{args.iter}.pt'} does not exist")
        need = args.avg + 1 if args.use_averaged_model else args.avg
        if len(names) < need:
            missing = "an older checkpoint than " + str(names[-1])
            raise SystemExit(f"--iter {args.iter} --avg {args.avg} needs {need} checkpoints in {exp}; "
                             f"found {len(names)} (missing {missing})")
        if args.use_averaged_model:
            start, end = names[args.avg], names[0]
            sd = ckpt.average_two_averaged_models(start, end)
        else:
            sd = ckpt.average_checkpoints(names[: args.avg])
        source = names[0] if args.avg == 1 else f"{names[0]} (averaged with --avg {args.avg})"
    else:
        if args.epoch <= 0:
            raise SystemExit("give --iter N or --epoch N (or --checkpoint FILE)")
        if args.use_averaged_model:
            start = exp / f"epoch-{args.epoch - args.avg}.pt"
            end = exp / f"epoch-{args.epoch}.pt"
            for p in (start, end):
                if not p.is_file():
                    raise SystemExit(f"--epoch {args.epoch} --avg {args.avg} --use-averaged-model needs {p}, "
                                     "which does not exist")
            sd = ckpt.average_two_averaged_models(start, end)
        else:
            paths = [exp / f"epoch-{i}.pt" for i in range(args.epoch - args.avg + 1, args.epoch + 1)]
            for p in paths:
                if not p.is_file():
                    raise SystemExit(f"--epoch {args.epoch} --avg {args.avg} needs {p}, which does not exist")
            sd = ckpt.average_checkpoints(paths)
        end = exp / f"epoch-{args.epoch}.pt"
        source = end if args.avg == 1 else f"{end} (averaged with --avg {args.avg})"
    _load_weights(model, sd, source)
    return checkpoint_suffix(args)


def _load_weights(model: nn.Module, sd, source) -> None:
    """load_model_weights, keeping the weights on a mismatch so the error can say which size they are."""
    from anyphone.training.checkpoint import CheckpointMismatchError, load_model_weights

    try:
        load_model_weights(model, sd, source)
    except CheckpointMismatchError as e:
        e.state_dict = sd
        raise


def _batch_of(path: Path) -> int:
    return int(Path(path).stem.split("-")[-1])


@torch.no_grad()
def decode_dataset(dl, model: nn.Module, task, args, tokenizer, device) -> list[tuple[str, str, str, str]]:
    """Returns (cut_id, ref_text, hyp_text, language) for every cut of the loader."""
    from tqdm import tqdm

    results = []
    for batch in tqdm(dl, desc="decoding", unit="batch", leave=False):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        hyps = task.decode(model, batch, args)
        langs = batch.get("languages") or [""] * len(hyps)
        for cut_id, ref, hyp, lang in zip(batch["cut_ids"], batch["texts"], hyps, langs):
            results.append((cut_id, ref, tokenizer.decode(hyp), lang or ""))
    return results


def decode_main(args: argparse.Namespace, task) -> dict[str, dict[str, float]]:
    from anyphone.data.module import PhoneDataModule
    from anyphone.decoding import scoring
    from anyphone.text.tokenizer import IpaTokenizer

    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.decoding_method = args.decoding_method or task.default_decoding_method
    tokenizer = IpaTokenizer.from_dir(args.lang_dir)
    model = task.build_model(args, tokenizer)
    label = load_decoding_weights(args, model)
    model.to(device).eval()
    log.info("Decoding with %s (%s), %s parameters", label, args.decoding_method,
             f"{sum(p.numel() for p in model.parameters()):,}")

    suffix = checkpoint_suffix(args)
    res_dir = Path(args.exp_dir) / args.decoding_method
    res_dir.mkdir(parents=True, exist_ok=True)
    datamodule = PhoneDataModule(args, output_downsampling_factor=task.output_downsampling_factor)
    summary: dict[str, dict[str, float]] = {}
    for name, dl in datamodule.test_dataloaders(tokenizer).items():
        results = decode_dataset(dl, model, task, args, tokenizer, device)
        scoring.write_recogs(res_dir / f"recogs-{name}-{suffix}.txt", results)
        report = scoring.write_errs(res_dir / f"errs-{name}-{suffix}.txt", name, results, pfer=args.pfer)
        scoring.write_language_table(res_dir / f"per-language-{name}-{suffix}.txt", report)
        summary[name] = {"PER": report.overall.per, **({"PFER": report.overall.pfer} if args.pfer else {})}
        log.info("%s: PER %.2f%%%s over %d cuts", name, report.overall.per,
                 f", PFER {report.overall.pfer:.2f}%" if args.pfer else "", len(results))
    scoring.write_summary(res_dir / f"per-summary-{suffix}.txt", summary)
    print((res_dir / f"per-summary-{suffix}.txt").read_text())
    return summary


def get_decode_parser(task_name: str, description: str | None = None) -> argparse.ArgumentParser:
    from anyphone.data.module import PhoneDataModule
    from anyphone.models.presets import add_model_arguments
    from anyphone.training.tasks import get_task

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decode_arguments(parser)
    add_model_arguments(parser)
    PhoneDataModule.add_arguments(parser)
    get_task(task_name).add_arguments(parser)
    return parser


def decode_main_cli(task_name: str, argv: list[str] | None = None, description: str | None = None):
    from anyphone.training.tasks import get_task

    args = get_decode_parser(task_name, description).parse_args(argv)
    return decode_main(args, get_task(task_name))
