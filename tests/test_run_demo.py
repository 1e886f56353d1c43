"""run_demo.sh's allocator choice: a wrong --malloc is refused before any work, the tcmalloc that `--malloc auto`
finds is one a Python process can preload, and glibc-keep's tunables keep freed memory; each computes the same
numbers as glibc's defaults."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# three steps of training a small net; the probes print its output's bits, which the allocator must not change
TRAIN_PROBE = ("import torch\n"
               "torch.manual_seed(0); torch.set_num_threads(1)\n"
               "m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))\n"
               "x = torch.randn(32, 64)\n"
               "for _ in range(3):\n"
               "    m.zero_grad(); m(x).square().mean().backward()\n"
               "    with torch.no_grad():\n"
               "        for p in m.parameters(): p -= 0.1 * p.grad\n")


def test_run_demo_refuses_an_unknown_allocator_before_building_anything():
    # run_demo.sh cds to its own folder; a refused option must stop it before prepare.sh (which would log)
    r = subprocess.run(["bash", str(ROOT / "run_demo.sh"), "--malloc", "jemalloc", "--python", "false"],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "run_demo.sh: --malloc must be auto, glibc-keep or glibc, got jemalloc" in r.stderr
    assert "prepare.sh" not in r.stdout + r.stderr


def test_the_tcmalloc_found_is_preloaded_and_changes_no_number():
    lib = subprocess.run(["bash", str(ROOT / "shared/find_tcmalloc.sh")], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    if not lib:
        pytest.skip("no tcmalloc on this machine (apt install libtcmalloc-minimal4)")
    assert Path(lib).exists(), lib
    probe = (TRAIN_PROBE +
             "print('tcmalloc' in open('/proc/self/maps').read(), m(x).sum().double().item().hex())\n")

    def run(env_extra: dict[str, str]) -> tuple[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | env_extra
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True,
                             timeout=300).stdout.split()
        return out[0], out[1]

    loaded, with_tcmalloc = run({"LD_PRELOAD": lib})
    assert loaded == "True", f"LD_PRELOAD={lib} did not load tcmalloc"
    loaded, with_glibc = run({})
    assert loaded == "False"
    assert with_tcmalloc == with_glibc


def test_glibc_keep_keeps_freed_memory_and_changes_no_number():
    """run_demo.sh's glibc-keep environment (its `glibc_keep=(env ...)` line, used where tcmalloc is missing): a
    freed 256 MiB tensor stays in glibc's heap instead of going back to the kernel, and training computes the
    same numbers as with glibc's defaults."""
    m = re.search(r"^glibc_keep=\(env (.*)\)$", (ROOT / "run_demo.sh").read_text(), re.MULTILINE)
    assert m, "run_demo.sh has no glibc_keep=(env ...) line"
    keep = dict(kv.split("=", 1) for kv in shlex.split(m.group(1)))
    assert set(keep) == {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}
    probe = (TRAIN_PROBE +
             "big = torch.ones(64 * 2**20); del big\n"  # 256 MiB, freed
             "heap = 0\n"
             "for line in open('/proc/self/maps'):\n"
             "    if line.rstrip().endswith('[heap]'):\n"
             "        lo, hi = (int(v, 16) for v in line.split()[0].split('-')); heap += hi - lo\n"
             "print(heap >> 20, m(x).sum().double().item().hex())\n")

    def run(env_extra: dict[str, str]) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env | env_extra,
                             check=True, timeout=300).stdout.split()
        return int(out[0]), out[1]

    kept_mib, with_keep = run(keep)
    default_mib, with_defaults = run({})
    assert kept_mib >= 256 > default_mib, (kept_mib, default_mib)
    assert with_keep == with_defaults


def test_run_demo_passes_its_training_options_to_train_py(tmp_path):
    """--log-interval (and the fixed-work flags beside it) reach train.py as given, and it trains in fp32 whatever
    the CPU: run_demo.sh is run with a stand-in for Python that records each call's arguments and does no work."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"
    fake.write_text("#!/usr/bin/env bash\n"
                    f"printf '%s\\n' \"$*\" >> {shlex.quote(str(calls))}\n"
                    # the family query reads a decode method and a blank penalty from stdout
                    "if [ \"$1\" = -c ]; then echo ctc-prefix-beam-search 0.5; fi\n")
    fake.chmod(0o755)
    exp = tmp_path / "exp"
    r = subprocess.run(["bash", str(ROOT / "run_demo.sh"), "--python", str(fake), "--malloc", "glibc",
                        "--exp-dir", str(exp), "--log-interval", "7", "--max-batches", "21"],
                       check=False, capture_output=True, text=True, timeout=120)
    train = [line.split() for line in calls.read_text().splitlines() if "zipformer_crctc/train.py" in line]
    assert len(train) == 1, (calls.read_text(), r.stderr)
    argv = train[0]
    for flag, value in (("--log-interval", "7"), ("--max-batches", "21"), ("--exp-dir", str(exp)),
                        ("--num-threads", "2"), ("--use-bf16", "0")):
        assert argv[argv.index(flag) + 1] == value, (flag, argv)
    # no checkpoint was written, so the script stops at the decode step with an error of its own
    assert r.returncode != 0
