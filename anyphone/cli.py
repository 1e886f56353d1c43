"""The ``anyphone`` command line: recognise phones in audio, manage published models and phone inventories.

    anyphone recognize -i sample.wav                    # æ l u s ɔ ɹ s
    anyphone recognize -i clips/ --lang eng -o out.txt  # name<TAB>phones per file, sorted by name
    anyphone recognize -i sample.wav --timestamp        # start duration phone, one line per phone
    anyphone recognize -i sample.wav --topk 5           # Allosaurus top-k format
    anyphone download zipa-cr-small-500k                # fetch a published model into the Hugging Face cache
    anyphone list-models | remove-model NAME
    anyphone list-lang | list-phone --lang eng | write-phone/update-phone/restore-phone --lang eng ...
    anyphone finetune -i data/my_lang --init-from zipa-cr-small-500k --exp-dir exp/my_lang   # wave/text dir

``python -m anyphone.cli ...`` works too. Errors are one line on stderr; the exit status is 0 on success, 1 when
any input failed, 2 for bad options or a model that cannot be loaded.

Input problems (missing, empty or non-audio files, NaN/inf samples) are reported per file, the other files are
still recognised, and the failures are listed at the end. Digitally silent files are not failures: they give an
empty phone string and a note on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from anyphone.utils import str2bool as _str2bool

__all__ = ["build_parser", "main"]

log = logging.getLogger("anyphone")


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return n


def _positive_float(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}") from None
    if not 0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}")
    return x


class _Failure(Exception):
    """A one-line error that ends the command with ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------------------
# recognize


def _display_names(files: list[Path], spec: list[str]) -> list[str]:
    """Name printed for each file: its path relative to the input folder, else the path as given."""
    roots = [Path(s).expanduser() for s in spec if Path(s).expanduser().is_dir()]
    names = []
    for f in files:
        name = str(f)
        for r in roots:
            try:
                name = f.relative_to(r).as_posix()
                break
            except ValueError:
                continue
        names.append(name)
    return names


def _plot_path(plot: str, name: str, many: bool) -> Path:
    p = Path(plot)
    if not many:
        return p
    n = Path(name)
    stem = n.stem if n.is_absolute() or name.startswith("..") else n.with_suffix("").as_posix().replace("/", "_")
    return p.with_name(f"{p.stem}-{stem}{p.suffix or '.png'}")


def cmd_recognize(args: argparse.Namespace) -> int:
    from anyphone.inference.audio import AudioError, expand_inputs

    try:
        files = expand_inputs(args.input, recursive=args.recursive)
    except AudioError as e:
        raise _Failure(str(e), 1) from None
    # a folder is listed sorted by name by expand_inputs; several -i keep their order
    many = len(files) > 1 or any(Path(s).expanduser().is_dir() for s in args.input) or any(
        Path(s).suffix.lower() in (".txt", ".lst", ".list", ".scp") for s in args.input)
    rec = _load(args)
    names = _display_names(files, args.input)
    if args.output:
        Path(args.output).expanduser().parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") if args.output else contextlib.nullcontext(sys.stdout) as out:
        return _recognize_loop(args, rec, files, names, many, out)


def _recognize_loop(args: argparse.Namespace, rec, files: list[Path], names: list[str], many: bool, out) -> int:
    from tqdm import tqdm

    bar = tqdm(total=len(files), unit="file", file=sys.stderr, disable=True if (args.quiet or len(files) < 2)
               else None, dynamic_ncols=True, desc="recognizing")

    def note(msg: str) -> None:
        if bar.disable:
            print(f"anyphone: {msg}", file=sys.stderr, flush=True)
        else:
            bar.write(f"anyphone: {msg}", file=sys.stderr)

    failures: list[str] = []
    silent = 0
    try:
        results = rec.recognize_many(files, lang=args.lang, topk=args.topk, timestamp=args.timestamp,
                                     emit=args.emit, prior=args.prior, keep_posteriors=bool(args.plot))
        for (path, res), name in zip(results, names):
            bar.update(1)
            if isinstance(res, Exception):
                msg = str(res).splitlines()[0] if str(res) else type(res).__name__
                failures.append(msg)
                note(f"error: {msg}")
                continue
            for n_ in res.notes:
                note(f"{path}: {n_}")
            silent += res.silent
            text = res.format()
            if many:
                lines = text.split("\n") if text else [""]
                text = "\n".join(f"{name}\t{line}" for line in lines)
            print(text, file=out, flush=True)
            if args.plot:
                from anyphone.inference.plot import plot_posteriorgram

                png = plot_posteriorgram(res, _plot_path(args.plot, name, many))
                if not args.quiet:
                    note(f"wrote {png}")
    except ValueError as e:  # bad options (prior file, language, ...)
        raise _Failure(str(e).splitlines()[0], 2) from None
    finally:
        bar.close()
    if failures:
        if many:
            print(f"anyphone: {len(failures)} of {len(files)} file(s) failed:", file=sys.stderr)
            for msg in failures:
                print(f"  {msg}", file=sys.stderr)
        return 1
    return 0


def _load(args: argparse.Namespace):
    from anyphone.inference.api import load_model
    from anyphone.inference.hub import ModelNotAvailableError, UnsafeCheckpointError

    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    try:
        return load_model(args.model, device=args.device, iter=args.iter, avg=args.avg, epoch=args.epoch,
                          tokens=args.tokens, revision=args.revision, batch_size=args.batch_size,
                          chunk_seconds=args.chunk_seconds)
    except (ModelNotAvailableError, UnsafeCheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, ModelNotAvailableError) and "could not download" in msg:
            msg += f"; fetch it once while online with `anyphone download {args.model}`"
        raise _Failure(msg, 2) from None


# --------------------------------------------------------------------------------------------------------
# models


def cmd_download(args: argparse.Namespace) -> int:
    from anyphone.inference.hub import ModelNotAvailableError, download_model

    try:
        files = download_model(args.name, revision=args.revision)
    except ModelNotAvailableError as e:
        raise _Failure(str(e), 1) from None
    print(f"{files.name or args.name}\t{files.checkpoint}")
    if files.tokens:
        print(f"tokens\t{files.tokens}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_list_models(args: argparse.Namespace) -> int:
    from anyphone.inference.hub import MODELS, list_models

    rows = list_models()
    print(f"{'name':30s} {'family':10s} {'size':6s} {'steps':6s} {'cached':7s} description")
    for r in rows:
        desc = MODELS[r.name].description if r.name in MODELS else r.repo_id
        cached = _size(r.size_on_disk) if r.cached else "-"
        print(f"{r.name:30s} {r.family or '?':10s} {r.size or '?':6s} {r.steps or '?':6s} {cached:7s} {desc}")
    return 0


def cmd_remove_model(args: argparse.Namespace) -> int:
    from anyphone.inference.hub import ModelNotAvailableError, remove_model

    try:
        freed = remove_model(args.name)
    except ModelNotAvailableError as e:
        raise _Failure(str(e), 1) from None
    print(f"removed {args.name} ({_size(freed)} freed)")
    return 0


# --------------------------------------------------------------------------------------------------------
# inventories


def _inventory():
    import anyphone.inventory as inv

    return inv


def _inv_call(fn, *a):
    inv = _inventory()
    try:
        return fn(*a)
    except inv.InventoryError as e:
        raise _Failure(str(e), 1) from None


def cmd_list_lang(args: argparse.Namespace) -> int:
    inv = _inventory()
    for code in inv.list_languages():
        try:
            info = inv.language_info(code)
        except inv.InventoryError:
            info = {"name": code, "custom": True, "phones": 0}
        mark = " (custom)" if info.get("custom") else ""
        print(f"{code}\t{info.get('name', code)}\t{info.get('phones', '?')} phones{mark}")
    return 0


def cmd_list_phone(args: argparse.Namespace) -> int:
    inv = _inventory()
    if args.lang:
        phones = _inv_call(inv.get_inventory, args.lang)
    else:
        from anyphone.text.tokenizer import SPECIAL_TOKENS, IpaTokenizer

        phones = [t for t in IpaTokenizer.default().id2token if t not in SPECIAL_TOKENS]
    print(" ".join(phones))
    return 0


def cmd_write_phone(args: argparse.Namespace) -> int:
    inv = _inventory()
    out = _inv_call(inv.write_inventory, args.lang, args.output)
    print(f"wrote {len(inv.get_inventory(args.lang))} phones of {inv.canonical_language(args.lang)} to {out}")
    return 0


def cmd_update_phone(args: argparse.Namespace) -> int:
    inv = _inventory()
    dst = _inv_call(inv.update_inventory, args.lang, args.input)
    print(f"installed custom inventory {dst} ({len(inv.get_inventory(dst.stem))} phones)")
    return 0


def cmd_restore_phone(args: argparse.Namespace) -> int:
    inv = _inventory()
    removed = _inv_call(inv.restore_inventory, args.lang)
    code = inv.canonical_language(args.lang)
    print(f"{code}: custom inventory removed, built-in one restored" if removed
          else f"{code}: no custom inventory; the built-in one is in use")
    return 0


# --------------------------------------------------------------------------------------------------------
# finetune


def cmd_finetune(args: argparse.Namespace) -> int:
    from anyphone.training.finetune import FinetuneError, build_parser, finetune

    # finetune's own parser; flags it does not know go on to the training parser
    opts, extra = build_parser().parse_known_args(args.finetune_args)
    try:
        finetune(opts, extra)
    except FinetuneError as e:
        raise _Failure(str(e), 2) from None
    return 0


# --------------------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    from anyphone.inference.api import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="anyphone", description="Multilingual phone recognition (ZIPA models).",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="Log model loading and other details.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("recognize", aliases=["run"], help="Recognise phones in audio files.",
                       description="Recognise phones in audio (WAV, FLAC, OGG, MP3; any rate; stereo is mixed "
                       "down). One file prints its phones; a folder or list prints name<TAB>phones per file.")
    r.add_argument("-i", "--input", required=True, action="append",
                   help="Audio file, folder of audio files, or list file (.txt/.lst/.scp: one path per line). "
                   "May be repeated.")
    r.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"Published model name (see list-models; default {DEFAULT_MODEL}), a .pth state_dict "
                   "with tokens.txt beside it, a recipe exp dir (with --iter/--epoch and --avg), or an .onnx model.")
    r.add_argument("--lang", default=None, help="Restrict output to this language's phone inventory (ISO 639-3, "
                   "e.g. eng; see list-lang).")
    r.add_argument("-k", "--topk", type=_positive_int, default=1,
                   help="Print the k most probable tokens with probabilities at each emitting frame.")
    r.add_argument("--timestamp", nargs="?", const=True, default=False, type=_str2bool,
                   help="Print 'start duration phone' lines (seconds). --timestamp or --timestamp=true.")
    r.add_argument("-e", "--emit", type=_positive_float, default=1.0,
                   help="> 1 emits more phones, < 1 fewer (default 1.0).")
    r.add_argument("--prior", default=None, help="File of 'phone logprob' lines added to those tokens' scores.")
    r.add_argument("-o", "--output", default=None, help="Write results to this file instead of stdout.")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default).")
    r.add_argument("--batch-size", type=_positive_int, default=8,
                   help="Audio windows decoded together (default 8; 1 makes results independent of padding).")
    r.add_argument("--chunk-seconds", type=_positive_float, default=30.0,
                   help="Long audio is decoded in windows of this length (default 30).")
    r.add_argument("--iter", type=int, default=None, help="Exp dir: use checkpoint-ITER.pt (with --avg).")
    r.add_argument("--epoch", type=int, default=None, help="Exp dir: use epoch-EPOCH.pt (with --avg).")
    r.add_argument("--avg", type=int, default=None, help="Exp dir: number of checkpoints to average.")
    r.add_argument("--tokens", default=None, help="tokens.txt to use instead of the one beside the model.")
    r.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a published model.")
    r.add_argument("--plot", default=None, help="Draw the phone posteriorgram to this PNG (several inputs: "
                   "PNG-<name>.png each).")
    r.add_argument("--recursive", action="store_true", help="Also take audio files in sub-folders.")
    r.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (default: torch's choice).")
    r.add_argument("-q", "--quiet", action="store_true", help="No progress bar or notes.")
    r.set_defaults(func=cmd_recognize)

    d = sub.add_parser("download", help="Download a published model into the Hugging Face cache.")
    d.add_argument("name", help="Model name (see list-models) or Hub repo id.")
    d.add_argument("--revision", default=None, help="Branch, tag or commit hash.")
    d.set_defaults(func=cmd_download)

    sub.add_parser("list-models", help="List published models and which are cached.").set_defaults(
        func=cmd_list_models)
    rm = sub.add_parser("remove-model", help="Delete a model from the cache.")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove_model)

    sub.add_parser("list-lang", help="List languages with a phone inventory.").set_defaults(func=cmd_list_lang)
    lp = sub.add_parser("list-phone", help="Print a language's phone inventory (all model phones without --lang).")
    lp.add_argument("--lang", default=None)
    lp.set_defaults(func=cmd_list_phone)
    wp = sub.add_parser("write-phone", help="Write a language's inventory to a file (one phone per line).")
    wp.add_argument("--lang", required=True)
    wp.add_argument("-o", "--output", required=True)
    wp.set_defaults(func=cmd_write_phone)
    up = sub.add_parser("update-phone", help="Install an edited inventory file for a language.")
    up.add_argument("--lang", required=True)
    up.add_argument("-i", "--input", required=True)
    up.set_defaults(func=cmd_update_phone)
    rp = sub.add_parser("restore-phone", help="Remove a language's custom inventory.")
    rp.add_argument("--lang", required=True)
    rp.set_defaults(func=cmd_restore_phone)
    # every argument after `finetune` is handed to anyphone.training.finetune untouched (no '-' options here),
    # so training flags such as --max-minutes pass through; `anyphone finetune --help` shows its flags
    ft = sub.add_parser("finetune", add_help=False, prefix_chars="+",
                        help="Fine-tune a model on your own wave/text data dir (anyphone finetune --help).")
    ft.add_argument("finetune_args", nargs="*", help=argparse.SUPPRESS)
    ft.set_defaults(func=cmd_finetune)
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``anyphone``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="anyphone: %(message)s", level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr)
    os.environ.setdefault("TQDM_MININTERVAL", "0.5")
    try:
        return int(args.func(args) or 0)
    except _Failure as e:
        print(f"anyphone: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("anyphone: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `anyphone recognize ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
