# Two entry points: `make demo` (try ocrwatch against the local emulator) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint demo bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "ocrwatch needs Python 3.11 or newer; set PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "python3 -m venv failed: on Debian/Ubuntu install it with: apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check ocrwatch tests benchmarks examples
	$(BIN)/ruff check ocrwatch tests benchmarks examples
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	cd benchmarks && for b in memory submit_throughput daemon_latency daemon_throughput catchup idle_cpu; do \
		echo "== $$b"; ../$(BIN)/python $$b.py || exit 1; done

clean:
	rm -rf $(VENV) demo
