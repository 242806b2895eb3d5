# Set-up and checks. torch is pinned to 2.13.0: on these machines that is the CPU build from a local
# file; any other version pulls several GB of CUDA packages.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
TIMM   := timm==1.0.31
OPEN_CLIP := open_clip_torch==3.3.0

.PHONY: demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

# timm and OpenCLIP are reference implementations for tests only; they install without their torchvision
# requirement (tests/stubs stands in for it)
$(VENV)/.test: pyproject.toml $(VENV)/.core
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(TIMM) $(OPEN_CLIP)
	touch $@

demo: $(VENV)/.core
	$(BIN)/python examples/demo.py

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

# the edit loop: everything but the tests marked slow (real models, full-size parity, subprocess suites)
test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -q -m "not slow"

# side-by-side against transformers / timm / onnxruntime; about 12 minutes (BENCH_ARGS=--quick for less)
bench: $(VENV)/.test
	$(BIN)/python benchmarks/compare.py --model vit_base_patch16_224 --batch-sizes 1 16 $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-out .pytest_cache
