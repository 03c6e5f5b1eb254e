# Two commands matter: `make demo` (audit the bundled reference) and `make test`.
# Both create the local virtual environment .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bench wheel-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The bundled reference memorises its training digits, so the audit is expected
# to fail the gate (exit 1); only an error (exit 2) fails this target.
demo: setup
	$(BIN)/leakaudit demo || [ $$? -eq 1 ]
	@echo "report: leakaudit-demo/audit/report.html"

# Two pytest-xdist workers (the suite's machine has two cores; an audit uses one thread there), each given
# whole test files so that a file's shared audit runs once, the longest files first (tests/conftest.py).
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

test: setup
	$(BIN)/python -m pytest -q $(XDIST)

# The inner loop: everything but whole audits, subprocesses, the browser and the wheel.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST)

# A short pass over the benchmarks; bench/README.md has the full runs.
bench: setup
	$(BIN)/python -m bench.bench_matching --quick
	$(BIN)/python -m bench.bench_memory --images 5000
	$(BIN)/python bench/bench_inversion.py --models digits-mlp-1pc --seeds 0

clean:
	rm -rf $(VENV) build dist *.egg-info leakaudit-demo leakaudit-out bench/out
