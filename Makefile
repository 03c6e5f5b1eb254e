# Two commands matter: `make demo` (audit the bundled reference) and `make test`.
# Both create the local virtual environment .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench wheel-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/leakaudit demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/bench_matching.py --quick
	$(BIN)/python bench/bench_inversion.py --quick

clean:
	rm -rf $(VENV) build dist *.egg-info leakaudit-demo leakaudit-out bench/out
