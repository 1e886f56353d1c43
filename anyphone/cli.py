"""The ``anyphone`` command line: recognise phones in audio, manage published models and phone inventories.

    anyphone recognize -i sample.wav                    # æ l u s ɔ ɹ s
    anyphone recognize -i clips/ --lang eng -o out.txt  # name<TAB>phones per file, sorted by name
    anyphone recognize -i sample.wav --timestamp        # start duration phone, one line per phone
    anyphone recognize -i sample.wav --topk 5           # Allosaurus top-k format
    anyphone download zipa-cr-small-500k                # fetch a published model into the Hugging Face cache
    anyphone list-models | remove-model NAME
    anyphone list-lang | list-phone --lang eng | write-phone/update-phone/restore-phone --lang eng ...
    anyphone finetune -i data/my_lang --init-from zipa-cr-small-500k --exp-dir exp/my_lang   # wave/text dir
    anyphone tune local/tune_space.json --n-trials 20   # Optuna search over train.py flags, scored on dev PER

``python -m anyphone.cli ...`` works too. Errors are one line on stderr; the exit status is 0 on success, 1 when
any input failed, 2 for bad options or a model that cannot be loaded.

Input problems (missing, empty or non-audio files, dangling links, implausible sample rates, NaN/inf samples,
missing lines of a list file) are reported per file, the other files are still recognised, and the failures are
listed at the end. Digitally silent files are not failures: they give an empty phone string and a note on
stderr; a truncated file is decoded as far as it goes, with a note. File names are printed escaped
(``anyphone.inference.audio.escape_name``: tab, newline and bytes that are not UTF-8 become ``\\t``, ``\\n``,
``\\xNN``), so each result stays one TSV line.

``-o`` is refused, before anything is opened, when it names a folder or one of the inputs (audio, list, model,
prior, tokens). It is written to a temporary file beside it and renamed into place when complete, so a reader
sees the old file or the whole new one, and two runs writing one ``-o`` each leave a whole result (the last
rename wins). A run stopped part-way (Ctrl-C, an unexpected error) leaves ``-o`` as it was and keeps what it
had decoded in ``<output>.partial``.
"""

from __future__ import annotations

import argparse
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


def _printable(msg: str) -> str:
    """``msg`` on one printable line: control characters and bytes that are not UTF-8 (in file names) escaped."""
    from anyphone.inference.audio import escape_name

    return escape_name(msg).replace("\\\\", "\\")


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


def _output_conflicts(args: argparse.Namespace, files: list[Path]) -> list[Path]:
    """Every path that ``-o``/``--plot`` must not overwrite: audio and list inputs, the model, prior and tokens."""
    keep = list(files) + [Path(s).expanduser() for s in args.input if not Path(s).expanduser().is_dir()]
    model = Path(args.model).expanduser()
    if model.is_dir():  # an exp dir or a folder of ONNX files: its files, not the folder (-o may go inside)
        keep += [q for q in model.iterdir() if q.is_file()]
    elif model.exists():
        keep.append(model)
    keep += [Path(x).expanduser() for x in (args.prior, args.tokens) if x]
    return keep


def _check_outputs(args: argparse.Namespace, files: list[Path], names: list[str], many: bool) -> Path | None:
    """Refuse, before anything is opened or loaded, an -o or --plot that is a folder or would overwrite an input;
    create -o's folder. Returns the -o path (None: stdout)."""
    from anyphone.fileio import OutputError, check_output_path

    inputs = _output_conflicts(args, files)
    out = None
    try:
        if args.output:
            out = Path(args.output).expanduser()
            if not out.is_dir():
                try:
                    out.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise _Failure(f"{out}: cannot create its folder {out.parent} ({e.strerror})", 2) from None
            check_output_path(out, inputs)
        if args.plot:
            plots = {_plot_path(args.plot, n, many) for n in names} if many else {Path(args.plot)}
            for png in sorted(plots):
                check_output_path(png, [*inputs, *([out] if out else [])])
    except OutputError as e:
        raise _Failure(str(e), 2) from None
    return out


def cmd_recognize(args: argparse.Namespace) -> int:
    from anyphone.fileio import atomic_write, atomic_write_text
    from anyphone.inference.audio import AudioError, expand_inputs

    failed: list[AudioError] = []  # list lines that name no file, dangling links: reported with the others
    try:
        files = expand_inputs(args.input, recursive=args.recursive, failures=failed)
    except AudioError as e:
        raise _Failure(str(e), 1) from None
    # a folder is listed sorted by name by expand_inputs; several -i keep their order
    many = len(files) + len(failed) > 1 or any(Path(s).expanduser().is_dir() for s in args.input) or any(
        Path(s).suffix.lower() in (".txt", ".lst", ".list", ".scp") for s in args.input)
    names = _display_names(files, args.input)
    out_path = _check_outputs(args, files, names, many)
    rec = _load(args) if files else None
    done: list[str] = []  # what has been decoded, for <output>.partial should the run stop part-way
    try:
        if out_path is None:
            return _recognize_loop(args, rec, files, names, many, sys.stdout, failed)
        with atomic_write(out_path) as out:
            return _recognize_loop(args, rec, files, names, many, out, failed, done)
    except (Exception, KeyboardInterrupt) as e:
        if done:
            partial = out_path.with_name(out_path.name + ".partial")
            try:
                atomic_write_text(partial, "".join(done))
                print(f"anyphone: {len(done)} result(s) decoded before the run stopped are in "
                      f"{_printable(str(partial))}; {_printable(str(out_path))} was left as it was", file=sys.stderr)
            except OSError:
                pass
        if isinstance(e, (_Failure, BrokenPipeError)):
            raise
        if isinstance(e, OSError):
            where = e.filename if e.filename is not None else out_path or "<stdout>"
            raise _Failure(f"{where}: cannot write ({e.strerror or e})", 1) from None
        if isinstance(e, (RuntimeError, MemoryError)) and not args.verbose:  # e.g. out of memory; -v: traceback
            raise _Failure(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, 1) from None
        raise


def _recognize_loop(args: argparse.Namespace, rec, files: list[Path], names: list[str], many: bool, out,
                    failed: list | None = None, done: list[str] | None = None) -> int:
    from tqdm import tqdm

    from anyphone.inference.audio import escape_name

    bar = tqdm(total=len(files), unit="file", file=sys.stderr, disable=True if (args.quiet or len(files) < 2)
               else None, dynamic_ncols=True, desc="recognizing")

    def note(msg: str) -> None:
        if bar.disable:
            print(f"anyphone: {msg}", file=sys.stderr, flush=True)
        else:
            bar.write(f"anyphone: {msg}", file=sys.stderr)

    failures: list[str] = []
    for e in failed or []:
        failures.append(_printable(str(e)))
        note(f"error: {failures[-1]}")
    silent = 0
    try:
        results = rec.recognize_many(files, lang=args.lang, topk=args.topk, timestamp=args.timestamp,
                                     emit=args.emit, prior=args.prior,
                                     keep_posteriors=bool(args.plot)) if files else []
        for (path, res), name in zip(results, names):
            bar.update(1)
            if isinstance(res, Exception):
                msg = str(res).splitlines()[0] if str(res) else type(res).__name__
                failures.append(_printable(msg))
                note(f"error: {failures[-1]}")
                continue
            for n_ in res.notes:
                note(f"{escape_name(path)}: {n_}")
            silent += res.silent
            text = res.format()
            if many:
                lines = text.split("\n") if text else [""]
                text = "\n".join(f"{escape_name(name)}\t{line}" for line in lines)
            print(text, file=out, flush=True)
            if done is not None:
                done.append(text + "\n")
            if args.plot:
                from anyphone.inference.plot import plot_posteriorgram

                png = plot_posteriorgram(res, _plot_path(args.plot, name, many))
                if not args.quiet:
                    note(f"wrote {escape_name(png)}")
    except ValueError as e:  # bad options (prior file, language, ...)
        raise _Failure(str(e).splitlines()[0], 2) from None
    finally:
        bar.close()
    if failures:
        if many:
            print(f"anyphone: {len(failures)} of {len(files) + len(failed or [])} file(s) failed:", file=sys.stderr)
            for msg in failures:
                print(f"  {msg}", file=sys.stderr)
        return 1
    return 0


def _load(args: argparse.Namespace):
    from anyphone.inference.api import CheckpointShapeError, load_model
    from anyphone.inference.hub import ModelNotAvailableError
    from anyphone.weights.safe_load import UnsafeCheckpointError

    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    try:
        return load_model(args.model, device=args.device, iter=args.iter, avg=args.avg, epoch=args.epoch,
                          use_averaged_model=args.use_averaged_model, tokens=args.tokens, revision=args.revision,
                          batch_size=args.batch_size, chunk_seconds=args.chunk_seconds,
                          config=getattr(args, "model_size", None))
    except CheckpointShapeError as e:
        # the API's message says config=; on the command line the knob is --model-size
        if e.asked is None:
            hint = "pass --model-size tiny|small|large, the size it was trained with"
        elif e.asked == "config.json":
            hint = "the config.json beside it does not describe it: fix or remove it, or pass --model-size"
        else:
            hint = f"--model-size {e.asked} is not the size it was trained with: drop it to infer the size"
        raise _Failure(f"{e.path}: {e.detail}; {hint}", 2) from None
    except (ModelNotAvailableError, UnsafeCheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, ModelNotAvailableError) and "could not download" in msg:
            msg += f"; fetch it once while online with `anyphone download {args.model}`"
        raise _Failure(msg, 2) from None


# --------------------------------------------------------------------------------------------------------
# align


_ALIGN_FORMATS = ("textgrid", "tsv", "ctm")


def _align_formats(spec: str) -> list[str]:
    fmts = [f.strip().lower() for f in spec.split(",") if f.strip()]
    bad = [f for f in fmts if f not in _ALIGN_FORMATS]
    if bad or not fmts:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(_ALIGN_FORMATS)}, "
                                         f"got {spec!r}")
    return fmts


def cmd_align(args: argparse.Namespace) -> int:
    """Align audio with its phones; see anyphone.alignment and anyphone.alignment.jobs for the inputs."""
    from anyphone.alignment import (
        AlignmentError,
        align_log_probs,
        espeak_voice_for,
        parse_ipa,
        text_to_transcript,
    )
    from anyphone.alignment.jobs import JobError, find_jobs
    from anyphone.fileio import OutputError, atomic_write_text, check_output_path
    from anyphone.inference.audio import AudioError

    if args.phones is not None and args.text is not None:
        raise _Failure("give --phones (IPA) or --text (with --lang), not both", 2)
    if args.text is not None and not args.lang:
        raise _Failure("--text needs --lang (the eSpeak NG voice that turns the text into phones)", 2)
    ortho = bool(args.lang) and args.phones is None  # transcripts are text for eSpeak, else IPA
    if ortho:
        try:
            voice = espeak_voice_for(args.lang)
        except AlignmentError as e:
            raise _Failure(str(e), 2) from None
    try:
        jobs = find_jobs(args.input, args.phones if args.phones is not None else args.text)
    except JobError as e:
        raise _Failure(str(e), 1) from None
    out = Path(args.output).expanduser() if args.output else None
    kind = out.suffix.lower() if out is not None else ""
    fmts = args.format or (["tsv"] if out is None else ["textgrid"] if kind == ".textgrid"
                           else [kind[1:]] if kind in (".tsv", ".ctm") else ["textgrid", "tsv"])
    if out is None and "textgrid" in fmts:
        raise _Failure("TextGrid output needs -o (a folder, or a .TextGrid file for one recording)", 2)
    if kind == ".textgrid" and len(jobs) != 1:
        raise _Failure(f"-o {out} is one TextGrid but the input has {len(jobs)} recordings; give a folder", 2)
    try:
        if out is not None and kind in (".textgrid", ".tsv", ".ctm"):
            check_output_path(out, [j.audio for j in jobs])
    except OutputError as e:
        raise _Failure(str(e), 2) from None
    rec = _load(args)
    if not rec.model_family.has_ctc:  # the family says whether its output is CTC log-probabilities
        raise _Failure(f"{args.model}: alignment needs a CTC model (CR-CTC); this is a {rec.family}", 2)
    failures: list[str] = []
    tsv: list[str] = []
    ctm: list[str] = []
    many = len(jobs) > 1
    for job in jobs:
        if job.problem:
            failures.append(_printable(job.problem))
            print(f"anyphone: error: {failures[-1]}", file=sys.stderr)
            continue
        try:
            if ortho:
                transcript = text_to_transcript(job.transcript or "", voice, where=job.where)
            else:
                transcript = parse_ipa(job.transcript or "", where=job.where)
            lp, duration = rec.frame_log_probs(job.audio)
            ali = align_log_probs(lp, transcript, rec.tokenizer.token2id, rec.frame_shift,
                                  blank_id=rec.tokenizer.blank_id, duration=duration, split=args.split,
                                  max_share=args.max_share, where=str(job.audio))
        except (AlignmentError, AudioError) as e:
            failures.append(_printable(str(e).splitlines()[0]))
            print(f"anyphone: error: {failures[-1]}", file=sys.stderr)
            continue
        tsv.append(ali.tsv(job.name, header=not tsv))
        ctm.append(ali.ctm(job.name))
        if out is not None and "textgrid" in fmts:
            tg = out if kind == ".textgrid" else out / f"{job.name}.TextGrid"
            ali.write_textgrid(tg)
        if args.plot:
            import numpy as np

            from anyphone.inference.plot import plot_alignment

            ali.posteriors, ali.id2token = np.exp(lp), list(rec.tokenizer.id2token)
            ali.blank_id, ali.source = rec.tokenizer.blank_id, str(job.audio)
            png = plot_alignment(ali, _plot_path(args.plot, job.name, many))
            if not args.quiet:
                print(f"anyphone: wrote {_printable(str(png))}", file=sys.stderr)
    try:
        if out is None:
            sys.stdout.write("".join(ctm if fmts == ["ctm"] else tsv))
        elif kind in (".tsv", ".ctm"):
            atomic_write_text(out, "".join(tsv if kind == ".tsv" else ctm))
        elif kind != ".textgrid":
            for fmt, rows in (("tsv", tsv), ("ctm", ctm)):
                if fmt in fmts:
                    atomic_write_text(out / f"alignment.{fmt}", "".join(rows))
    except OSError as e:
        raise _Failure(f"{e.filename or out}: cannot write ({e.strerror or e})", 1) from None
    if failures:
        if many:
            print(f"anyphone: {len(failures)} of {len(jobs)} recording(s) not aligned:", file=sys.stderr)
            for msg in failures:
                print(f"  {msg}", file=sys.stderr)
        return 1
    return 0


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
    """code, name, phone count and the source in use (custom, espeak or phoible; '+' lists the others)."""
    inv = _inventory()
    for code in inv.list_languages():
        try:
            info = inv.language_info(code)
        except inv.InventoryError:
            info = {"name": code, "custom": True, "phones": 0, "source": "custom", "sources": ["custom"]}
        mark = " (custom)" if info.get("custom") else ""
        others = [s for s in info.get("sources", []) if s != info.get("source")]
        source = info.get("source", "?") + "".join(f" +{s}" for s in others)
        print(f"{code}\t{info.get('name', code)}\t{info.get('phones', '?')} phones{mark}\t{source}")
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
# tune


def cmd_tune(args: argparse.Namespace) -> int:
    from anyphone.tuning import TuneError, TuneInterrupted, tune_main

    try:
        return tune_main(args)
    except TuneError as e:
        raise _Failure(str(e), 2) from None
    except TuneInterrupted as e:
        raise _Failure(str(e), 130) from None


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
                   help="Print 'start end phone' lines (seconds): the recognised phones aligned to the audio, "
                   "blank frames shared out between neighbours (see anyphone.alignment). --timestamp or "
                   "--timestamp=true.")
    r.add_argument("-e", "--emit", type=_positive_float, default=None,
                   help="> 1 emits more phones, < 1 fewer. The same knob as decode.py's --blank-penalty: emit = "
                   "exp(blank_penalty). Default: the penalty recorded in the exp dir's config.json by decode.py "
                   "--save-decode-options 1, else 1.0.")
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
    r.add_argument("--use-averaged-model", type=_str2bool, default=True,
                   help="Exp dir with --iter/--epoch: the running averages kept in the checkpoints, as decode.py "
                   "averages them (default 1; 0: the raw weights).")
    r.add_argument("--tokens", default=None, help="tokens.txt to use instead of the one beside the model.")
    r.add_argument("--model-size", default=None, choices=["tiny", "small", "large"],
                   help="Size preset of a .pth or exp dir model; normally told from its weights, needed only if "
                   "that fails.")
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

    a = sub.add_parser("align", help="Align audio with its phones: start and end of each phone (and word).",
                       description="Align audio with a known transcript: IPA phones, or text with --lang (turned "
                       "into phones by eSpeak NG). Input: one audio file (transcript from --phones/--text or x.txt "
                       "beside it), a folder of audio with .txt/.lab transcripts, or a Kaldi folder (wave + text). "
                       "Output: Praat TextGrid, TSV and CTM.")
    a.add_argument("-i", "--input", required=True, action="append", help="Audio file, folder, or Kaldi folder.")
    a.add_argument("--phones", default=None, help="IPA transcript of the one input file (phones or words).")
    a.add_argument("--text", default=None, help="Orthographic transcript of the one input file (needs --lang).")
    a.add_argument("--lang", default=None, help="Transcripts are text in this language (ISO 639-3 or an eSpeak "
                   "voice such as en-us), turned into phones with eSpeak NG; words get a tier.")
    a.add_argument("-o", "--output", default=None, help="A folder (NAME.TextGrid each, alignment.tsv/.ctm), a "
                   ".TextGrid file (one input), or a .tsv/.ctm file. Default: TSV on stdout.")
    a.add_argument("--format", type=_align_formats, default=None,
                   help="Comma-separated textgrid,tsv,ctm (default: from -o; textgrid,tsv for a folder).")
    a.add_argument("-m", "--model", default=DEFAULT_MODEL, help="A CTC model (as for recognize).")
    a.add_argument("--split", type=float, default=1.0,
                   help="Share of the blank frames between two phones given to the first (default 1.0: a CTC spike "
                   "marks a phone's start; chosen on the dev alignment set, see RESULTS.md).")
    a.add_argument("--max-share", type=float, default=0.1,
                   help="Most seconds a phone is extended into blank frames on each side (default 0.1).")
    a.add_argument("--plot", default=None, help="Draw the posteriorgram with phone and word tiers to this PNG "
                   "(several inputs: PNG-<name>.png each).")
    for flag, kw in (("--device", {"default": "auto"}), ("--batch-size", {"type": _positive_int, "default": 8}),
                     ("--chunk-seconds", {"type": _positive_float, "default": 30.0}),
                     ("--iter", {"type": int, "default": None}), ("--epoch", {"type": int, "default": None}),
                     ("--avg", {"type": int, "default": None}), ("--tokens", {"default": None}),
                     ("--use-averaged-model", {"type": _str2bool, "default": True}),
                     ("--revision", {"default": None}), ("--num-threads", {"type": int, "default": 0})):
        a.add_argument(flag, help="As for recognize.", **kw)
    a.add_argument("-q", "--quiet", action="store_true", help="No notes.")
    a.set_defaults(func=cmd_align)

    sub.add_parser("list-lang", help="List languages with a phone inventory (code, name, phones, source).")\
        .set_defaults(func=cmd_list_lang)
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
    tu = sub.add_parser("tune", help="Hyper-parameter search over a recipe's train.py flags (Optuna).",
                        description="Search train.py flags with Optuna: each trial a short training scored on dev "
                        "PER, median pruning, resumable and shareable studies (see anyphone.tuning).")
    from anyphone.tuning import add_tune_arguments

    add_tune_arguments(tu)
    tu.set_defaults(func=cmd_tune)
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
        print(f"anyphone: error: {_printable(str(e))}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("anyphone: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `anyphone recognize ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
