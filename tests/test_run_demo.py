"""run_demo.sh's allocator choice: a wrong --malloc is refused before any work, and the tcmalloc that `--malloc
auto` finds is one a Python process can preload, computing the same numbers as glibc's malloc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_run_demo_refuses_an_unknown_allocator_before_building_anything():
    # run_demo.sh cds to its own folder; a refused option must stop it before prepare.sh (which would log)
    r = subprocess.run(["bash", str(ROOT / "run_demo.sh"), "--malloc", "jemalloc", "--python", "false"],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "run_demo.sh: --malloc must be auto or glibc, got jemalloc" in r.stderr
    assert "prepare.sh" not in r.stdout + r.stderr


def test_the_tcmalloc_found_is_preloaded_and_changes_no_number():
    lib = subprocess.run(["bash", str(ROOT / "shared/find_tcmalloc.sh")], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    if not lib:
        pytest.skip("no tcmalloc on this machine (apt install libtcmalloc-minimal4)")
    assert Path(lib).exists(), lib
    probe = ("import torch, sys\n"
             "torch.manual_seed(0); torch.set_num_threads(1)\n"
             "m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))\n"
             "x = torch.randn(32, 64)\n"
             "for _ in range(3):\n"
             "    m.zero_grad(); m(x).square().mean().backward()\n"
             "    with torch.no_grad():\n"
             "        for p in m.parameters(): p -= 0.1 * p.grad\n"
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
