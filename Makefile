# Two entry points after a clone:  `make repro` (the offline default pipeline) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.saelib-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup repro test smoke bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/system-packages.txt
	bash scripts/install.sh $(PYTHON) $(VENV)
	touch $(STAMP)

repro: $(STAMP)
	$(VENV)/bin/dvc repro

test: $(STAMP)
	$(PY) -m pytest -q -rs

smoke: $(STAMP)
	$(PY) -m pytest -q -rs tests/test_pipeline.py

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
