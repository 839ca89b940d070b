# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint types unit integration bench charts clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade 'pip>=25.1'
	# Both drivers (the tests use every engine), the cold tier, and the dev dependency group
	# (PEP 735).
	$(BIN)/pip install --quiet -e '.[postgresql,mysql,iceberg]' --group dev
	$(BIN)/python -m compileall -q src >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/archivist demo

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)

types: $(STAMP)
	$(BIN)/mypy --strict src

test: lint types
	$(BIN)/pytest -q

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[postgresql,mysql,iceberg,bench]' --group dev
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/archive_bench.py --quick

# The charts docs/performance.md embeds, from the results of record in bench/results/.
# A new benchmark of record: commit its JSON there and name it here.
charts: $(BENCH_STAMP)
	$(BIN)/python bench/charts.py --name record bench/results/2026-12-06-epyc-full-*.json
	$(BIN)/python bench/charts.py --name quick bench/results/2026-12-07-epyc-quick.json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
