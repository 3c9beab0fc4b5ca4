# `make demo` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= outputs/demo
BATCH_SIZES ?= 1,4,8

.PHONY: demo test run clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install --no-deps clip-benchmark==1.6.2
	touch $@

demo: $(VENV)/.installed
	OUT=$(OUT) BATCH_SIZES=$(BATCH_SIZES) INT8=1 FP16_ESTIMATE=1 PYTHON=$(PY) bash steps/run_all.sh

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

# Real data: make run DATA_DIR=flickr30k PRETRAINED=open_clip_pytorch_model.bin [MODEL_NAME=ViT-B-32]
MODEL_NAME ?= ViT-B-32
run: $(VENV)/.installed
	@test -n "$(DATA_DIR)" || { echo "make run needs DATA_DIR=<flickr30k folder> PRETRAINED=<checkpoint>"; exit 2; }
	OUT=$(or $(RUN_OUT),outputs/$(MODEL_NAME)) DATA_DIR=$(DATA_DIR) MODEL_NAME=$(MODEL_NAME) \
		PRETRAINED=$(PRETRAINED) BATCH_SIZES=$(BATCH_SIZES) PYTHON=$(PY) bash steps/run_all.sh

clean:
	rm -rf outputs
