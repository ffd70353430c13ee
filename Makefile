# Two commands for a fresh machine: `make demo` and `make test`. Both build the venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint format clean

venv: $(STAMP)

# Reinstalls whenever pyproject.toml or the constraints change. torch goes first, pinned to
# the CPU build, so that nothing later can pull a multi-GB CUDA wheel.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/asru-lab demo

# Notebooks run as tests (nbmake) with a small evaluation sample. tests/browser drives Debian's
# Chromium in JupyterLab; it is installed first when missing (ASRU_LAB_SKIP_BROWSER=1 skips both).
test: venv
	scripts/ensure_chromium.sh
	ASRU_LAB_SMALL=1 $(BIN)/python -m pytest -q --nbmake tests notebooks

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
