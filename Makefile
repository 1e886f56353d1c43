# Two commands: `make demo` (the main job on the embedded default) and `make test`.
# Both create .venv on first use and install anyphone into it (CPU torch 2.13 where available).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.anyphone-installed
TEST_STAMP := $(VENV)/.anyphone-test-installed
NJOBS ?= 2

# what the demo's processes import (torch._dynamo and sympy come with the optimizer's first step), and what every
# later decode or `anyphone recognize` imports (panphon's pandas for PFER, scipy.signal for resampling)
WARM_IMPORTS := import torch._dynamo, torch.utils.tensorboard, matplotlib.pyplot, lhotse, kaldialign, faker, \
  num2words, wordfreq, panphon, scipy.signal, anyphone.training.recipe, anyphone.training.loop, anyphone.evaluation.recipe, \
  anyphone.families.crctc, anyphone.families.transducer, anyphone.data.espeak, anyphone.cli

.PHONY: demo demo-transducer test install lint clean-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# --no-compile: pip byte-compiles every file it installs, one after the other (35-50 s of the install here);
	# the one import below writes bytecode for the modules the demo runs, even where PYTHONDONTWRITEBYTECODE is set.
	# torch first: the pinned CPU build where the machine has it, else any release >= 2.4
	$(PY) -m pip install -q --no-compile torch==2.13.0 || $(PY) -m pip install -q --no-compile 'torch>=2.4'
	# the package alone: the demo needs none of the test tools (30 s less to install)
	$(PY) -m pip install -q --no-compile -e .
	PYTHONDONTWRITEBYTECODE= $(PY) -c "$(WARM_IMPORTS)"
	@touch $@

install: $(STAMP)

# Triton (about 290 MB) only for the tests: they run the GPU kernels in its CPU interpreter; the demo needs none
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q -e '.[dev,kernel-tests]' || echo "Triton not installed: its kernel tests will be skipped"
	# the tests start many Python processes that import more than the demo: bytecode for everything, in parallel
	# (a few of torch's files are for newer Pythons and do not compile, as when pip compiles them: not an error)
	$(PY) -m compileall -q -j 0 $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") > /dev/null || true
	@touch $@

test: $(TEST_STAMP)
	$(PY) -m pytest -q -x --durations=15 tests

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check anyphone local zipformer_crctc zipformer_transducer tests benchmarks

# The main job: synthesize the default corpus, train the tiny CR-CTC model on CPU, average, decode, score.
demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH ./run_demo.sh --nj $(NJOBS)

demo-transducer: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH ./run_demo.sh --nj $(NJOBS) --recipe zipformer_transducer

clean-demo:
	rm -rf data/shar/embedded zipformer_crctc/exp-demo zipformer_transducer/exp-demo
