# Every target creates .venv when missing and installs the CPU torch wheel before the project,
# so that pip never resolves a multi-GB CUDA build of torch.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= demo-out
WORKERS ?= 2

.PHONY: install demo test bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,demo,report]'
	# icetk without its dependencies (its torchvision import breaks beside CPU torch): the tokenizer
	# tests run icetk's own text tokenizer against ours with stand-ins for its image modules.
	$(BIN)/pip install -q --no-deps 'icetk>=0.0.7'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/glm-corpus demo --out $(OUT) --workers $(WORKERS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build *.egg-info
