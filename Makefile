# beit-deploy: `make demo` (install + export + predict) and `make test` (install + tests) on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# torch==2.13.0 is a CPU build on our machines; override for a CUDA box: make install TORCH='torch'
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: install
	$(BIN)/python samples/demo.py

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) export/*/ engines/*/ .pytest_cache
