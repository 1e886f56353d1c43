# Two commands: `make demo` (the main job on the embedded default) and `make test`.
# Both create .venv on first use and install anyphone into it (CPU torch 2.13 where available).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.anyphone-installed
TEST_STAMP := $(VENV)/.anyphone-test-installed
NJOBS ?= 2

.PHONY: demo demo-transducer test install lint clean-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the pinned CPU build where the machine has it, else any release >= 2.4
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q 'torch>=2.4'
	# the package alone: the demo needs none of the test tools (30 s less to install)
	$(PY) -m pip install -q -e .
	@touch $@

install: $(STAMP)

# Triton (about 290 MB) only for the tests: they run the GPU kernels in its CPU interpreter; the demo needs none
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q -e '.[dev,kernel-tests]' || echo "Triton not installed: its kernel tests will be skipped"
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
