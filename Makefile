# Two commands a new user needs: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench package-check clean-venv

# __init__.py holds the version: the editable install's metadata must follow it.
$(STAMP): pyproject.toml requirements-dev.txt requirements-nodeps.txt src/organseg/__init__.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/organseg demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# Build the sdist and the wheel, check them, run organseg from the wheel in a fresh environment (CI runs it).
package-check: $(STAMP)
	PY=$(PY) bash .ci/package_check.sh

bench: $(STAMP)
	$(PY) benchmarks/bench_models.py

clean-venv:
	rm -rf $(VENV)
