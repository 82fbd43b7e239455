# Two entry points: `make demo` (try ocrwatch against the local emulator) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
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
