"""Shared test set-up: the helpers beside this file (training_fixtures, hub_cache, hub_server) are importable
from every test folder."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # tests/faults/* import the helpers beside this file
    sys.path.insert(0, str(TESTS))
