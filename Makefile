# One-command set-up: every target creates the virtual environment it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast fuzz bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Run the embedded demo (digits, 2x2 subdomains with overlap, local Ray on this machine)
demo: $(STAMP)
	$(BIN)/ddray demo --output runs/demo

## Run the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Only the unit tests: no Ray, no services or clusters (about a minute)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray and not cluster"

## Schemathesis over the REST API with 1000 examples per operation (no 5xx allowed)
fuzz: $(STAMP)
	DDRAY_FUZZ_EXAMPLES=1000 DDRAY_FUZZ_SECONDS=1200 $(BIN)/python -m pytest -q tests/test_api_schema.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_end_to_end.py
	$(BIN)/python benchmarks/bench_local_phase.py
	$(BIN)/python benchmarks/bench_scale.py

clean:
	rm -rf runs .pytest_cache
