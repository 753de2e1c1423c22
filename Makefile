# Entry points: setup, report, compare, test, test-fast, lab, clean (see README).
# Run parameters are make variables, passed to `python -m helpers.report` unchanged:
#   make report MODEL=gpa MODEL_DIR=/path/to/GPA DEVICE=npu:0 DTYPE=bfloat16
PYTHON ?= python3
# Python keeps the compiled bytecode of the project's own sources and tests (in their
# gitignored __pycache__ folders) even where the environment says not to: every process of a
# run or of the tests imports them again (a test worker's collection 8.5 -> 6.5 s).
unexport PYTHONDONTWRITEBYTECODE
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TEST_WORKERS ?= 2
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# Command-line variables except this Makefile's own; the CLI rejects unknown names.
PARAMS := $(filter-out PYTHON=% VENV=% TORCH_SPEC=% TEST_WORKERS=% GPU_CHECK_ARGS=% FAULT_ARGS=% STACK_% PROFILE_RUN=%,$(MAKEOVERRIDES))
# The lowest tested stack (helpers.compat.TESTED): the Ascend reports' torch and transformers.
# torch 2.9.0 is the registry's CUDA build (it runs on a CPU): 3.8 GB of wheels, kept in
# STACK_CACHE between runs, and a 7.8 GB venv, kept there too.
STACK_PYTHON ?= python3.11
STACK_TORCH ?= torch==2.9.0
STACK_PIN ?= transformers==4.57.6
STACK_CACHE ?= $(HOME)/.cache/adaptation-report
STACK_VENV ?= $(STACK_CACHE)/venv-$(notdir $(STACK_PYTHON))-$(subst ==,,$(STACK_TORCH))-$(subst ==,,$(STACK_PIN))

# Where a run's time goes: `make report PARAMS`, then its table per stage and part (wall and CPU
# seconds, host load); PROFILE_RUN=report/<run> prints the table of a finished run instead.
.PHONY: setup report profile compare fit test test-fast test-stacks fault-matrix lint lab clean clean-interrupted data gpu-check
.DEFAULT_GOAL := report

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON="$(PYTHON)" TORCH_SPEC="$(TORCH_SPEC)" scripts/setup.sh "$(VENV)"
	touch $@

report: $(STAMP)
	$(PY) -m helpers.report $(PARAMS)

profile: $(STAMP)
	$(PY) scripts/profile_report.py $(if $(PROFILE_RUN),--run $(PROFILE_RUN),$(PARAMS))

# The comparison of two or more finished runs of one model, in its own folder:
#   make compare A=report/<run-a> B=report/<run-b> [C=...] (or RUNS="a b c") [OUT=folder]
compare: $(STAMP)
	$(PY) -m helpers.compare $(PARAMS)

# Will it fit? Each side of the run these parameters make (target, CPU reference, float64
# golden, CPU baseline) estimated against the memory free now, before anything is loaded;
# exits 1 when one does not fit. Takes report's parameters: make fit MODEL=covo-audio-chat
fit: $(STAMP)
	$(PY) -m helpers.report --fit $(PARAMS)

lint: $(STAMP)
	$(PY) -m ruff check src tests notebooks scripts

# Two workers (pytest-xdist), each given whole test modules, longest first (tests/conftest.py)
# and its share of the cores; TEST_WORKERS=0 runs the suite in one process.
test: lint
	$(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The inner loop: unit tests without model loads, notebooks, worker processes or end-to-end
# runs (tests/conftest.py marks those slow); well under a minute.
test-fast: $(STAMP)
	$(PY) -m ruff check src tests notebooks scripts
	$(PY) -m pytest -q -m "not slow"

# The tiny report (HTML only, into report/stacks) and the fast tests on the lowest tested stack,
# in its own venv; e.g. make test-stacks STACK_TORCH=torch==2.13.0 for transformers 4.57.6 alone.
test-stacks:
	PYTHON="$(STACK_PYTHON)" TORCH_SPEC="$(STACK_TORCH)" PIN="$(STACK_PIN)" \
	  WHEELS="$(STACK_CACHE)/wheels" scripts/setup.sh "$(STACK_VENV)"
	$(STACK_VENV)/bin/python -m helpers.report OUT=report/stacks --no-pdf
	$(STACK_VENV)/bin/python -m pytest -q -m "not slow"

# One short run on a CUDA GPU (< 8 min): graph capture verified, both decode figures, bandwidth,
# parity with identical weights; summary printed and written to report/gpu-check.json. Not part
# of `make test`. Dry run on a CPU: make gpu-check GPU_CHECK_ARGS="--device cpu --profile tiny"
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

# Regenerate the shipped speech fixtures in data/audio/ (needs espeak-ng; the report does not).
data: $(STAMP)
	$(PY) scripts/make_audio_fixtures.py

# Notebooks run on their own write to report/lab/ (the summary notebook summarizes that folder).
lab: $(STAMP)
	$(PY) -m jupyter lab --notebook-dir=notebooks

# Run folders that did not finish (interrupted, or killed): OUT=... picks another folder.
clean-interrupted: $(STAMP)
	$(PY) -m helpers.report --prune $(PARAMS)

clean:
	rm -rf report/[0-9]* report/compare-* report/latest report/lab figures/*.png .cache .pytest_cache .ruff_cache

# The planted-fault matrix: stages 4 and 6 with each fault of helpers.faults planted on the
# target, at float32 and bfloat16; prints which check caught each (run it before trusting a
# PASS on a new machine). FAULT_ARGS="--device npu:0 --dtypes bfloat16" for a device.
fault-matrix: $(STAMP)
	$(PY) scripts/fault_matrix.py $(FAULT_ARGS)
