# Everything runs inside .venv, created on first use: a fresh clone needs only python3 and cargo.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# cargo test links libpython through pyo3: point it at the venv's interpreter.
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: install build wheel demo test test-rust test-py typecheck bench bench-core bench-py bench-peers bench-venvs lint lint-py clean

install: $(STAMP) build

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip 'maturin>=1.7,<2'
	$(PY) -m pip install -q -e '.[dev]' --no-build-isolation || $(VENV)/bin/maturin develop --release -E dev -q
	touch $(STAMP)

build: $(STAMP)
	$(VENV)/bin/maturin develop --release -q

# A release wheel in $(WHEEL_DIR) (the Dockerfile's build step runs exactly this target), for the
# interpreter WHEEL_PYTHON (not the dev venv's, which a Docker build stage does not have).
MATURIN      ?= $(VENV)/bin/maturin
WHEEL_DIR    ?= dist
WHEEL_PYTHON ?= python3
wheel:
	PYO3_PYTHON=$(WHEEL_PYTHON) $(MATURIN) build --release --out $(WHEEL_DIR) --interpreter $(WHEEL_PYTHON)

demo: install
	$(PY) -m ciotrack demo

test: install lint-py test-rust test-py typecheck

test-rust: $(STAMP)
	cargo test --quiet

test-py: build
	$(PY) -m pytest -q

typecheck: build
	$(PY) -m mypy --strict
	$(PY) -m mypy.stubtest ciotrack._core

# Peers live in venvs of their own: customerio-cdp-analytics installs the module `customerio` too and
# would shadow the official client (see benches/README.md).
PEERS_VENV := .venv-peers
CDP_VENV   := .venv-cdp

bench: install bench-core bench-py bench-peers

bench-core: $(STAMP)
	cargo bench --bench core -- --noplot $(if $(QUICK),--warm-up-time 1 --measurement-time 1)

bench-py: build
	$(PY) -m pytest benches -q --benchmark-only --benchmark-columns=median,iqr,ops,rounds $(if $(QUICK),--quick)

bench-peers: build bench-venvs
	$(PY) benches/compare_peers.py $(if $(QUICK),--quick)

bench-venvs: $(PEERS_VENV)/.installed $(CDP_VENV)/.installed

$(PEERS_VENV)/.installed:
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q 'segment-analytics-python==2.4.0' 'posthog==7.91.1'
	touch $@

$(CDP_VENV)/.installed:
	python3 -m venv $(CDP_VENV)
	$(CDP_VENV)/bin/pip install -q 'customerio-cdp-analytics==1.1.0'
	touch $@

lint: $(STAMP) lint-py
	cargo clippy --all-targets -- -D warnings
	cargo fmt --check
	$(PY) -m mypy --strict

# Python style (pyproject [tool.ruff]): pyflakes, pycodestyle, isort order, bugbear, pyupgrade.
lint-py: $(STAMP)
	$(PY) -m ruff check python tests benches

clean:
	rm -rf target $(VENV) python/ciotrack/*.so
