# beit-deploy: `make demo` (install + export + predict) and `make test` (install + tests) on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# torch==2.13.0 is a CPU build on our machines; override for a CUDA box: make install TORCH='torch'
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/pip --quiet --disable-pip-version-check --no-input
# Two stamps, so that a venv made for the demo never passes for the full stack: .installed (make install/test:
# torch, the export, quantize and serve extras, pytest, mypy, TensorRT stubs) and .installed-demo (make demo:
# torch and the export extra only). The full install stamps both: it holds everything the demo needs.
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install demo serve test test-all clean wheels gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[test]"
	$(BIN)/python tests/trt/trt_stubs.py install $(VENV)  # TensorRT's type stubs + 11.x bindings wheel, not installed
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml Makefile
	@echo "installing the demo's packages into $(VENV) (torch and beit-deploy[export]; a minute or two)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install "$(TORCH)"
	@$(PIP) install -e ".[export]"
	@touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	@$(BIN)/python samples/demo.py

# Triton on this machine's CPU (the serve extra's server): the demo export (random weights) as a model repository.
SERVE_EXPORT ?= export/beit-base-patch16-224/224x224
serve: install
	test -f $(SERVE_EXPORT)/manifest.json || $(BIN)/beit-deploy export --model beit-base-patch16-224 --random-weights
	$(BIN)/beit-deploy triton $(SERVE_EXPORT) --out model_repository
	$(BIN)/beit-deploy serve model_repository

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) export/*/ engines/*/ model_repository out .pytest_cache

# GPU box (no network, torch preinstalled, system python, beit-deploy not installed): bring the checkout, then
# there `make gpu-check PYTHON=python3`. It runs beit-deploy from the checkout (PYTHONPATH, no install) with this
# checkout's .venv python where there is one, else PYTHON. Nothing it runs needs polygraphy; onnxscript and onnx-ir
# (the exporter's, for the TensorRT rows) are installed from WHEELS (`make wheels` on a networked machine) when
# missing and there, else the parts that need them say why they were skipped. It never stops before the check: the
# log and gpu-check.json always land in GPU_CHECK_OUT. Without CUDA it is the CPU dry run (see docs/tensorrt.md).
WHEELS ?= .whl
GPU_PYTHON ?= 3.12
GPU_PY = $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
GPU_PIP = PIP_BREAK_SYSTEM_PACKAGES=1 $(GPU_PY) -m pip install --quiet --no-index --find-links $(WHEELS) --no-deps
GPU_CHECK_OUT ?= gpu-check-out

wheels: install
	mkdir -p $(WHEELS)
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) -d $(WHEELS) \
		$$($(BIN)/pip freeze | grep -iE '^(onnxscript|onnx-ir|polygraphy)==')

gpu-check:
	@for m in onnxscript:onnxscript onnx_ir:onnx-ir; do \
		$(GPU_PY) -c "import $${m%%:*}" 2>/dev/null || { test -d $(WHEELS) && $(GPU_PIP) $${m#*:}; } || \
		echo "gpu-check: $${m#*:} is not installed and $(WHEELS)/ has no wheel of it: parts that need it say so"; \
	done
	GPU_CHECK_OUT=$(GPU_CHECK_OUT) PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m beit_deploy.bench.gpu_check
