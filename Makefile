# Two commands on a fresh machine (see README):  make simulate  ·  make test
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup simulate demo screenshot test lint bench clean

# The example third-party plugin is installed beside the project, as a user would install one:
# its entry point is then really there, and the tests show it loads only where allowed.
$(BIN)/.installed: pyproject.toml examples/trending_plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e examples/trending_plugin
	touch $@

setup: $(BIN)/.installed

# The main job: the default fault scenario through the engine, a summary per phase, and
# report/index.html (self-contained; open it in a browser).
simulate: setup
	$(BIN)/resilience validate policies.yaml
	mkdir -p report
	$(BIN)/resilience simulate --json report/result.json --report report

# Decision traces for a handful of requests, with failing, slow and hanging session stores.
demo: setup
	$(BIN)/resilience validate policies.yaml
	$(BIN)/resilience demo policies.yaml

# docs/report-screenshot.png from a fresh run, in Debian's headless Chromium.
screenshot: simulate
	command -v chromium >/dev/null || apt-get install -y chromium
	$(BIN)/python scripts/screenshot_report.py report/result.json docs/report-screenshot.png

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy resilience plugins

# Two workers for most of the suite; the tests on the real clock (a real Redis, a real server,
# the chaos soak) then run alone, so that the other worker's load cannot make them late.
test: lint
	$(BIN)/python -m pytest -n 2 -m "not serial"
	$(BIN)/python -m pytest -m serial

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis
