# Two entry points after a clone:  `make repro` (the offline default pipeline) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.saelib-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup repro quick test smoke bench lab clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/system-packages.txt scripts/requirements-nodeps.txt
	bash scripts/install.sh $(PYTHON) $(VENV)
	touch $(STAMP)

repro: $(STAMP)
	$(VENV)/bin/dvc repro

# The headline rows only (one seed each), as a DVC experiment on the default profile: the baselines, each
# penalty as run and as described, the L1 controls and the sparsity-matched standard SAE.
QUICK_VARIANTS := topk,topk_k100,compete_run6,ortho_run4,compete_described,ortho_described,topk_l1,topk_k100_l1,relu_l1_matched
quick: $(STAMP)
	$(VENV)/bin/dvc exp run -S 'run_variants=[$(QUICK_VARIANTS)]' -S 'unlearning_variants.yaml:unlearning_variants=[$(QUICK_VARIANTS)]'

test: $(STAMP)
	$(PY) -m pytest -q -rs

# The pipeline test alone on the smoke profile (the real Gemma-3-270M; `make test` runs it on `tiny`).
smoke: $(STAMP)
	SAELIB_PIPELINE_PROFILE=smoke $(PY) -m pytest -q -rs tests/test_pipeline.py

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# JupyterLab on the repository: notebooks/*.py open as notebooks (jupytext.toml; the default viewer for
# .py files is set in .jupyter/labconfig/default_setting_overrides.json) and save back as py:percent.
lab: $(STAMP)
	JUPYTER_CONFIG_PATH=$(CURDIR)/.jupyter$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH} SAELIB_ROOT=$(CURDIR) \
		$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks \
		$(if $(filter 0,$(shell id -u)),--ServerApp.allow_root=True)

clean-venv:
	rm -rf $(VENV)
