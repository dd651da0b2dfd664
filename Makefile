# The README's two commands. Both create .venv on first use and reuse it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= out/demo

# Nothing here ever needs a model hub or telemetry.
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/react demo --out $(DEMO_OUT)

test: setup
	@bash scripts/test_deps.sh
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
