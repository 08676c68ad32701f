# make bench: every benchmark, then benchmarks/results/summary.md (about 13 minutes on a quiet 2-core CPU)
# make bench-quick: a smoke run of them all at tiny sizes; make test: the test suite
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: bench bench-quick bench-summary test

bench:
	$(PYTHON) -m benchmarks

bench-quick:
	$(PYTHON) -m benchmarks --quick

bench-summary:
	$(PYTHON) -m benchmarks --summary-only

test:
	$(PYTHON) -m pytest
