# `make demo` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
# On an Ascend host, USE_HOST_PACKAGES=1 PYTHON=/path/to/the/python/you/use/with/CANN makes .venv-host instead:
# it sees that Python's packages (ais_bench, aclruntime, torch, torch_npu) and installs only what is missing.
PYTHON ?= python3
USE_HOST_PACKAGES ?= 0
ifeq ($(USE_HOST_PACKAGES),1)
VENV ?= .venv-host
VENV_FLAGS := --system-site-packages
else
VENV ?= .venv
VENV_FLAGS :=
endif
PY := $(VENV)/bin/python
BATCH_SIZES ?= 1,4,8
# The floor lane: Python 3.9 with the lowest versions requirements.txt admits (requirements-floor.txt)
FLOOR_PYTHON ?= $(shell command -v python3.9 >/dev/null 2>&1 && python3.9 -c 'import sys; print(sys.executable)' 2>/dev/null || ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.9*/bin/python 2>/dev/null | tail -1)
FLOOR_VENV ?= .venv-floor

.PHONY: demo test test-floor lint ci run doctor clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
ifeq ($(USE_HOST_PACKAGES),1)
	$(PY) -m openclip_ascend.host_packages > $(VENV)/host-constraints.txt
	$(PY) -m pip install -r requirements.txt -c $(VENV)/host-constraints.txt
else
	$(PY) -m pip install -r requirements.txt
endif
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install --no-deps clip-benchmark==1.6.2
	touch $@

$(FLOOR_VENV)/.installed: requirements-floor.txt
	@test -n "$(FLOOR_PYTHON)" || { echo "make test-floor needs Python 3.9 (pyenv install 3.9, or FLOOR_PYTHON=/path/to/python3.9)"; exit 2; }
	$(FLOOR_PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -r requirements-floor.txt
	$(FLOOR_VENV)/bin/python -m pip install --no-deps clip-benchmark==1.6.2
	touch $@

demo: $(VENV)/.installed
	OUT=$(or $(OUT),outputs/demo) BATCH_SIZES=$(BATCH_SIZES) INT8=1 FP16_ESTIMATE=1 TASK=retrieval,zeroshot PYTHON=$(PY) bash steps/run_all.sh

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

# the same suite on the floor of the supported versions (torch 2.1, numpy 1.x, Python 3.9)
test-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

# what CI runs: lint, then both lanes
ci: lint test test-floor

# Real data: make run DATA_DIR=flickr30k [PRETRAINED=checkpoint file or tag] [MODEL_NAME=ViT-B-32] [OUT=…]
MODEL_NAME ?= ViT-B-32
run: $(VENV)/.installed
	@test -n "$(DATA_DIR)" || { echo "make run needs DATA_DIR=<flickr30k folder> (PRETRAINED: a checkpoint file or tag, default laion2b_s34b_b79k)"; exit 2; }
	OUT=$(or $(OUT),outputs/$(MODEL_NAME)) DATA_DIR=$(DATA_DIR) MODEL_NAME=$(MODEL_NAME) \
		PRETRAINED=$(PRETRAINED) BATCH_SIZES=$(BATCH_SIZES) PYTHON=$(PY) bash steps/run_all.sh

# Will a run work here, and on which path? (a minute; doctor.json in outputs/doctor)
doctor: $(VENV)/.installed
	$(PY) openclip_doctor.py

clean:
	rm -rf outputs
