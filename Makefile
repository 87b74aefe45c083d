# Everything installs into .venv from nothing but python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOME_DIR ?= .tally-demo
# Daft on Ray for the scale tests, apart from .venv: they pull pyarrow down a major version.
SCALE := .venv-scale
SCALE_PACKAGES := daft==0.7.26 ray==2.60.0 deltalake==1.6.3

.PHONY: setup demo test test-quick lint browser scale bench clean

$(BIN)/tally: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/tally

# The main job on sample_logs/: a fresh home, ingest, validate, compact, report.
demo: setup
	TALLY_HOME=$(HOME_DIR) ./scripts/demo.sh

lint: setup
	$(BIN)/ruff check pipeline tests bench scripts examples
	$(BIN)/mypy pipeline

# Debian's Chromium for the dashboard's browser tests: installed with apt where this runs as
# root; elsewhere those tests are skipped and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
	      || echo "could not install chromium: the browser tests will be skipped"; \
	  else \
	    echo "no chromium, and apt needs root: the browser tests will be skipped"; \
	  fi; }

# .venv-scale, built once (the stamp names what is in it); offline, the scale tests are skipped.
scale:
	@if [ "$$(cat $(SCALE)/.installed 2>/dev/null)" != "$(SCALE_PACKAGES)" ]; then \
	  echo "installing $(SCALE_PACKAGES) into $(SCALE) for the scale tests"; \
	  { [ -x $(SCALE)/bin/python ] || $(PY) -m venv $(SCALE); } \
	  && $(SCALE)/bin/pip install --quiet $(SCALE_PACKAGES) \
	  && echo "$(SCALE_PACKAGES)" > $(SCALE)/.installed \
	  || echo "could not install $(SCALE_PACKAGES): the scale tests will be skipped"; \
	fi

test: lint browser scale
	$(BIN)/pytest -q

test-quick: lint
	$(BIN)/pytest -q -m 'not slow'

bench: setup
	$(BIN)/python -m bench.validate
	$(BIN)/python -m bench.tail
	$(BIN)/python -m bench.compact
	$(BIN)/python -m bench.compact_history
	$(BIN)/python -m bench.report
	$(BIN)/python -m bench.budgets
	$(BIN)/python -m bench.importers
	$(BIN)/python -m bench.serve
	$(BIN)/python -m bench.scale

clean:
	rm -rf $(VENV) $(SCALE) $(HOME_DIR) .pytest_cache .mypy_cache .ruff_cache
