"""Every command in README.md runs as written (after `make demo`): a renamed flag, script or subcommand fails here.

- README's ``bash`` blocks and the inline code that reads as a command are extracted (continuation lines
  joined, comments dropped).
- ``anyphone SUB ...`` commands are parsed by the real parser (types, choices and required options included);
  the cheap, self-contained ones run: ``anyphone --help`` (the console script), ``list-lang``,
  ``list-phone --lang fra``, ``list-models`` and ``SUB --help`` of every subcommand named.
- Scripts (``./zipformer_crctc/train.py``, ``python local/onnx_batch_decode.py``, ``prepare.sh`` ...) must exist,
  their ``--help`` must run, and every flag a command gives them must be in that help.
- Every ``--flag`` named in README's prose must belong to some script or subcommand.
- The commands on ``zipformer_crctc/exp-demo`` name what ``make demo`` leaves there (the last checkpoint, the
  ONNX file the export command writes). They are not run: the exp dir may be in use by a training.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z0-9][A-Za-z0-9_-]*)")
# Scripts whose flags README's prose names without a command (the transducer's --prune-range ...).
ALSO_DOCUMENTED = ["zipformer_transducer/train.py", "benchmarks/train_throughput.py"]


def _join_continuations(text: str) -> str:
    return re.sub(r"\\\n\s*", " ", text)


@functools.cache
def readme_commands() -> list[list[str]]:
    """Commands of README's bash blocks and inline code spans that read as commands, as argv lists."""
    text = README.read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        lines += _join_continuations(block).splitlines()
    for span in re.findall(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)", text):
        span = span.replace("\n", " ")
        if re.match(r"(anyphone |python3? |\./|local/|make |prepare\.sh)", span):
            lines.append(span)
    commands = []
    for line in lines:
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def _script_of(argv: list[str]) -> tuple[str, list[str]] | None:
    """(script path relative to the repository, its arguments) for a script command, else None."""
    if argv[0] in ("python", "python3") and len(argv) > 1:
        argv = argv[1:]
    name = argv[0].removeprefix("./")
    if name.endswith((".py", ".sh")):
        return name, argv[1:]
    return None


def _subcommands(help_text: str) -> list[str]:
    m = re.search(r"\{([a-z0-9_,-]+)\} \.\.\.", help_text)  # argparse subcommands: {a,b} ...
    return m.group(1).split(",") if m else []


# Runs each Python script's `--help` as `python SCRIPT --help` would (run as __main__, its folder first on
# sys.path, its own argv), all in one interpreter so torch is imported once rather than once per script.
HELP_RUNNER = r"""
import contextlib, io, json, runpy, sys
results = []
for script, sub in json.loads(sys.argv[1]):
    out = io.StringIO()
    sys.argv = [script, *([sub] if sub else []), "--help"]
    sys.path.insert(0, script.rsplit("/", 1)[0] if "/" in script else ".")
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:
            print(f"{type(e).__name__}: {e}")
            code = 1
    sys.path.pop(0)
    results.append([script, sub, code, out.getvalue()])
print(json.dumps(results))
"""


def _run_helps(keys: list[tuple[str, str | None]]) -> dict[tuple[str, str | None], tuple[int, str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    helps = {}
    py = [k for k in keys if k[0].endswith(".py")]
    if py:
        res = subprocess.run([sys.executable, "-c", HELP_RUNNER, json.dumps(py)], capture_output=True, text=True,
                             cwd=ROOT, timeout=600, check=False, env=env)
        assert res.returncode == 0, f"running the scripts' --help failed: {res.stderr[-2000:]}"
        helps.update({(s, sub): (code, text) for s, sub, code, text in json.loads(res.stdout.splitlines()[-1])})
    for script, sub in (k for k in keys if k[0].endswith(".sh")):
        res = subprocess.run(["bash", script, *([sub] if sub else []), "--help"], capture_output=True, text=True,
                             cwd=ROOT, timeout=120, check=False, env=env)
        helps[(script, sub)] = (res.returncode, res.stdout + res.stderr)
    return helps


@pytest.fixture(scope="module")
def script_help() -> dict[tuple[str, str | None], tuple[int, str]]:
    """``--help`` of every script README names (and of each argparse subcommand it uses)."""
    scripts = sorted({s[0] for argv in readme_commands() if (s := _script_of(argv))} | set(ALSO_DOCUMENTED))
    missing = [s for s in scripts if not (ROOT / s).is_file()]
    assert not missing, f"README names scripts that do not exist: {missing}"
    helps = _run_helps([(s, None) for s in scripts])
    helps.update(_run_helps([(s, sub) for (s, _), (_, text) in helps.items() for sub in _subcommands(text)]))
    return helps


def _anyphone_parsers() -> dict[str, object]:
    """Each `anyphone` subcommand's parser, by every name it answers to."""
    import argparse

    from anyphone.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _finetune_flags() -> set[str]:
    from anyphone.training.finetune import build_parser as finetune_parser
    from anyphone.training.recipe import get_train_parser

    return set(finetune_parser()._option_string_actions) | set(get_train_parser("crctc")._option_string_actions)


def test_readme_has_commands_to_check():
    progs = {argv[0] for argv in readme_commands()}
    assert {"anyphone", "make", "./zipformer_crctc/train.py", "python"} <= progs, progs
    assert len(readme_commands()) >= 30


def test_every_anyphone_command_in_readme_parses():
    """Parsed by the real parser (a typo in a flag, a bad choice or a missing required option fails)."""
    parsers = _anyphone_parsers()
    from anyphone.cli import build_parser

    for argv in readme_commands():
        if argv[0] != "anyphone":
            continue
        sub = argv[1]
        assert sub in parsers, f"README: `{shlex.join(argv)}`: no subcommand {sub!r}"
        if len(argv) == 2:  # prose naming a subcommand (`anyphone align`), not a command to run
            continue
        # exact names: argparse would also take an abbreviation that a new flag can make ambiguous
        inexact = [t for t in argv[2:] if t.startswith("-") and t.split("=")[0] not in
                   parsers[sub]._option_string_actions]
        if sub != "finetune":
            assert not inexact, f"README: `{shlex.join(argv)}`: not flags of anyphone {sub}: {inexact}"
        if sub == "finetune":  # its own parser, unknown flags go to the training parser
            unknown = [f for f in argv[2:] if f.startswith("-") and f.split("=")[0] not in _finetune_flags()]
            assert not unknown, f"README: `{shlex.join(argv)}`: unknown flags {unknown}"
            continue
        try:
            args = build_parser().parse_args(argv[1:])
        except SystemExit as e:
            pytest.fail(f"README: `{shlex.join(argv)}` does not parse (exit {e.code})")
        assert callable(args.func)


def test_cheap_readme_commands_run(capsys, monkeypatch):
    from anyphone.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = subprocess.run([str(Path(sys.executable).with_name("anyphone")), "--help"], capture_output=True,
                         text=True, check=False, timeout=120)
    if res.returncode == 127 or "No such file" in res.stderr:  # not installed as a console script here
        res = subprocess.run([sys.executable, "-m", "anyphone.cli", "--help"], capture_output=True, text=True,
                             check=False, timeout=120)
    assert res.returncode == 0 and "recognize" in res.stdout, res.stderr

    named = {argv[1] for argv in readme_commands() if argv[0] == "anyphone"}
    assert {"recognize", "align", "list-lang", "list-phone", "finetune"} <= named
    for sub in sorted(named):
        with pytest.raises(SystemExit) as e:
            main([sub, "--help"])
        assert e.value.code in (0, None), f"anyphone {sub} --help exited {e.value.code}"
        assert "usage" in capsys.readouterr().out.lower()

    assert main(["list-lang"]) == 0
    assert re.search(r"^fra\b", capsys.readouterr().out, re.MULTILINE), "list-lang does not list fra"
    assert main(["list-phone", "--lang", "fra"]) == 0
    phones = capsys.readouterr().out.split()
    assert "ʁ" in phones and len(phones) > 20
    assert main(["list-models"]) == 0
    assert "zipa-cr-small-500k" in capsys.readouterr().out


def test_readme_scripts_run_with_help_and_know_their_flags(script_help):
    for key, (rc, text) in script_help.items():
        assert rc == 0, f"{' '.join(k for k in key if k)} --help failed: {text[-500:]}"
    for argv in readme_commands():
        found = _script_of(argv)
        if not found:
            continue
        script, rest = found
        subs = _subcommands(script_help[(script, None)][1])
        sub = rest[0] if rest and rest[0] in subs else None
        if subs:
            assert sub is not None, f"README: `{shlex.join(argv)}`: expected one of {subs}"
        known = set(FLAG.findall(script_help[(script, sub)][1]))
        used = [t.split("=")[0] for t in rest if t.startswith("--")]
        unknown = [f for f in used if f not in known]
        assert not unknown, f"README: `{shlex.join(argv)}`: {script} has no {unknown}"
        short = [t for t in rest if re.fullmatch(r"-[A-Za-z]", t)]
        assert all(re.search(rf"(?<![\w-]){s}\b", script_help[(script, sub)][1]) for s in short), \
            f"README: `{shlex.join(argv)}`: unknown short option in {short}"


def test_every_flag_readme_names_exists(script_help):
    known: set[str] = set()
    for _, text in script_help.values():
        known |= set(FLAG.findall(text))
    for parser in _anyphone_parsers().values():
        known |= {f for f in parser._option_string_actions if f.startswith("--")}
    known |= _finetune_flags()
    # flags of other tools that the cluster section names in prose (torchrun, sbatch)
    known |= {"--max-restarts", "--rdzv-id", "--rdzv-backend", "--rdzv-endpoint", "--nnodes", "--nproc-per-node",
              "--requeue", "--signal"}
    text = README.read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    named = set()
    for span in re.findall(r"`([^`]+)`", prose):
        named |= set(FLAG.findall(span))
    for argv in readme_commands():  # bash-block fragments such as `--train-shar s3://...`
        if argv[0].startswith("--"):
            named.add(argv[0])
    unknown = sorted(named - known)
    assert not unknown, f"README names flags no script or subcommand has: {unknown}"


def test_make_targets_in_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = {argv[1] for argv in readme_commands() if argv[0] == "make" and len(argv) > 1}
    assert {"demo", "test"} <= targets
    for t in targets:
        assert re.search(rf"^{re.escape(t)}:", makefile, re.MULTILINE), f"README: `make {t}`: no such Makefile target"


def _demo_default(name: str) -> str:
    m = re.search(rf"^{name}=(\S+)", (ROOT / "run_demo.sh").read_text(), re.MULTILINE)
    assert m, f"run_demo.sh has no {name}= default"
    return m.group(1)


def test_commands_on_the_demo_model_name_what_make_demo_leaves():
    """`--iter` on zipformer_crctc/exp-demo is the demo's last checkpoint (the loop always saves the last
    batch), the model size is the demo's, and the ONNX file decoded is the one the export command writes."""
    from anyphone.export.recipe import _label, get_export_parser

    demo_cmds = [argv for argv in readme_commands() if any("exp-demo" in t for t in argv)]
    assert demo_cmds, "README shows no command on the demo's model"
    last = _demo_default("crctc_batches")  # the CR-CTC recipe's demo
    written: set[str] = set()
    for argv in demo_cmds:
        if "--iter" in argv:
            assert argv[argv.index("--iter") + 1] == last, \
                f"README: `{shlex.join(argv)}`: make demo's last checkpoint is checkpoint-{last}.pt"
        if "--model-size" in argv:
            assert argv[argv.index("--model-size") + 1] == "tiny"
        if argv[0].endswith("zipformer_crctc/export.py"):
            args = get_export_parser("crctc").parse_args(argv[1:])
            out = Path(args.output_dir or args.exp_dir)
            label = _label(args)
            written |= {str(out / f"model-{label}.onnx"), str(out / "tokens.txt")}
            written |= {str(out / f"model-{label}.{v}.onnx") for v in ("fp16", "int8") if getattr(args, v)}
    for argv in demo_cmds:
        if _script_of(argv) and _script_of(argv)[0] == "local/onnx_batch_decode.py":
            for flag in ("--model-path", "--tokens"):
                path = argv[argv.index(flag) + 1]
                assert path in written, f"README: `{shlex.join(argv)}`: {path} is not what the export command writes"
