# Magistrate's scripts. `make run` and `make test` work on a fresh machine with Python >= 3.11.
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif

.PHONY: install run test lint docs bench reliability

install: .venv/.installed

.venv/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

.tools/bin/uv:
	$(PYTHON) -m venv .tools && .tools/bin/pip install --quiet uv

run: install  ## the one-machine stack: embedded Postgres and Redis, web app, worker
	.venv/bin/magistrate up

# The suite runs in 3 processes (pytest-xdist; each its own databases and Redis database), a
# file per process at a time; the fault suite (tests/chaos: restarts, kills, timing bounds) then
# runs alone, and the coverage of both runs is measured against the floor.
test: lint  ## ruff, mypy, then the whole pytest suite, measuring coverage against its floor
	.venv/bin/pytest -n 3 --dist loadfile --ignore=tests/chaos --cov --cov-report= --cov-fail-under=0 --durations=20
	.venv/bin/pytest tests/chaos --cov --cov-append --cov-report=term:skip-covered --durations=5

docs: install  ## the documentation site (MkDocs Material) into site/; strict: a broken link fails
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d site

lint: install  ## ruff and mypy
	.venv/bin/ruff check .
	.venv/bin/mypy

bench: install  ## every benchmark under ops/bench, each printing JSON
	@set -e; found=0; for f in ops/bench/[!_]*.py; do [ -e "$$f" ] || continue; found=1; .venv/bin/python "$$f"; done; \
	[ $$found = 1 ] || echo '{"benchmarks": 0, "note": "no benchmark under ops/bench yet"}'

reliability: install  ## the fault suite (tests/chaos, tests/fuzz), then ops/RELIABILITY.md from its figures
	.venv/bin/python ops/reliability.py $(RELIABILITY_ARGS)
