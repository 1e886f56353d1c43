"""Shared test set-up: the helpers beside this file (training_fixtures, hub_cache, hub_server) are importable
from every test folder. The shared paths live in training_fixtures: REPO, and ZIPA_REF (the reference fixtures
made with ZIPA's code, ../shared/reference/zipa; the tests that need them skip without them)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # tests/faults/* import the helpers beside this file
    sys.path.insert(0, str(TESTS))
