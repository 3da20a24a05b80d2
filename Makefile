# Two commands matter: `make demo` and `make test`. Everything else is a step they use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit bench system-deps venv clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Runs the relay on its built-in demo: local backends, the relay in front, no network.
demo: $(STAMP)
	$(VENV)/bin/snirelay demo

# Debian packages the integration tests and the benchmark use (nginx, haproxy, curl, ...).
system-deps:
	@scripts/install-system-deps.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) system-deps lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

# The full run by default; BENCH_ARGS narrows or extends it, e.g.
#   make bench BENCH_ARGS='--only conn,sni --rounds 3 --baseline main'
bench: $(STAMP)
	@scripts/install-system-deps.sh --bench
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
