# handfit: `make demo` fits the example photo, `make test` runs the test suite,
# `make test-quick` only the tests not marked slow (the inner loop).
# Both create .venv (Python 3.11 when available) and install the package first.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= handfit_out

BLENDER_VENV  := .venv-blender
BLENDER_STAMP := $(BLENDER_VENV)/.installed

.PHONY: demo test test-quick test-blender install weights example bench clean help

help:
	@echo "make demo       create .venv, install, fit examples/hand.jpg into $(OUT)/"
	@echo "make test       create .venv, install, run the tests"
	@echo "make test-quick create .venv, install, run the tests not marked slow (about a minute)"
	@echo "make test-blender  also make .venv-blender (bpy 5.0.1, ~1 GB) and check track glTFs in real Blender"
	@echo "make weights    recalibrate the keypoints, retrain the regressor and the texture prior (handfit/weights/)"
	@echo "make example    re-render examples/hand.jpg"
	@echo "make bench      run the benchmarks in bench/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: any other version would pull gigabytes of CUDA wheels.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/handfit fit examples/hand.jpg -o $(OUT)
	@echo "demo: outputs written to $(OUT)/hand/ (result.json, overlay.png, meshes)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

# Tests over about a second carry @pytest.mark.slow; `make test` still runs them.
# One thread by default (override with OMP_NUM_THREADS=...): the quick tests'
# tensors are small, and on a busy 2-core machine two OpenMP threads spin against
# each other (10x slower fits). --durations names any test that creeps past 1 s.
test-quick: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} NUMBA_NUM_THREADS=$${NUMBA_NUM_THREADS:-1} \
		$(BIN)/python -m pytest -q -ra -m "not slow" --durations=5

# Blender runs as a subprocess in its own venv (bpy 5.0.1 is for Python 3.11 only; the
# pins are pyproject's `blender` extra), on files the main venv's `handfit batch` wrote.
$(BLENDER_STAMP):
	python3.11 -m venv $(BLENDER_VENV)
	$(BLENDER_VENV)/bin/python -m pip install -q --upgrade pip
	$(BLENDER_VENV)/bin/python -m pip install -q bpy==5.0.1 numpy==1.26.4
	@touch $(BLENDER_STAMP)

test-blender: $(STAMP) $(BLENDER_STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} NUMBA_NUM_THREADS=$${NUMBA_NUM_THREADS:-1} \
		HANDFIT_BLENDER_PYTHON=$(BLENDER_VENV)/bin/python $(BIN)/python -m pytest -q -ra -s tests/test_blender.py

weights: $(STAMP)
	$(BIN)/python -m handfit.train.calibrate --scenes 1200 --out handfit/weights/keypoints_anny.pt
	$(BIN)/python -m handfit.train.regressor --model anny --out handfit/weights/regressor_anny.pt
	OMP_NUM_THREADS=1 $(BIN)/python -m handfit train examples/configs/default.yaml --out train_out/texture_prior_anny
	cp train_out/texture_prior_anny/texture_prior.pt handfit/weights/texture_prior_anny.pt

example: $(STAMP)
	$(BIN)/python examples/make_example.py

bench: $(STAMP)
	$(BIN)/python bench/render.py
	$(BIN)/python bench/dev_keypoints.py

clean:
	rm -rf $(VENV) $(BLENDER_VENV) $(OUT) .pytest_cache train_out
