# Everything runs inside .venv, created on first use: a fresh clone needs only python3 and cargo.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# cargo test links libpython through pyo3: point it at the venv's interpreter.
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: install build demo test test-rust test-py typecheck bench bench-core bench-peers lint clean

install: $(STAMP) build

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip 'maturin>=1.7,<2'
	$(PY) -m pip install -q -e '.[dev]' --no-build-isolation || $(VENV)/bin/maturin develop --release -E dev -q
	touch $(STAMP)

build: $(STAMP)
	$(VENV)/bin/maturin develop --release -q

demo: install
	$(PY) -m ciotrack demo

test: install test-rust test-py typecheck

test-rust: $(STAMP)
	cargo test --quiet

test-py: build
	$(PY) -m pytest -q

typecheck: build
	$(PY) -m mypy --strict
	$(PY) -m mypy.stubtest ciotrack._core

bench: install bench-core
	$(PY) -m pytest benches -q --benchmark-only --benchmark-columns=median,iqr,ops,rounds
	$(PY) benches/compare_peers.py

bench-core: $(STAMP)
	cargo bench --bench core -- --noplot

lint: $(STAMP)
	cargo clippy --all-targets -- -D warnings
	cargo fmt --check
	$(PY) -m mypy --strict

clean:
	rm -rf target $(VENV) python/ciotrack/*.so
