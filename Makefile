# The two commands of the README. Both install everything they need first (idempotent, quick when
# already installed). A CPU-only machine gets the CPU build of torch; a machine that already has
# torch (e.g. a GPU box with its CUDA build) keeps it, and gets the DALI build of its CUDA major version.
PYTHON ?= python3

.PHONY: install demo test bench lint

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==2.13.0"
	@$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[dev,hdf5,envs,$$($(PYTHON) -m jepa_fast.hardware dali-extra)]"

demo: install
	$(PYTHON) -m jepa_fast demo --out runs/demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) -m bench.run_all

lint:
	$(PYTHON) -m ruff check jepa_fast preprocessing bench tools tests
