# Everything runs inside .venv, created on first use: a fresh clone needs only python3 and cargo.
# Another interpreter, in a venv of its own: `make test PYTHON=/opt/cpython/3.13/bin/python3.13 VENV=.venv-3.13`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# maturin develop installs into $VIRTUAL_ENV, or a `.venv` it finds: name the venv, whatever VENV is.
MATURIN := VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin
# The binding crate (rust/py) links libpython through pyo3 in cargo test/clippy: point it at the
# venv's interpreter. The core crate (rust/core) has no pyo3 at all: its tests and benches run with
# PYO3_PYTHON unset, which shows they need no Python.
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: install build demo test test-rust test-pythons test-py typecheck wheel bench bench-core bench-py bench-peers bench-venvs lint lint-py clean

install: $(STAMP) build

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip 'maturin>=1.7,<2'
	$(PY) -m pip install -q -e '.[dev]' --no-build-isolation || $(MATURIN) develop --release -E dev -q
	touch $(STAMP)

build: $(STAMP)
	$(MATURIN) develop --release -q

# The peak preset against the emulator (100 requests/s, Customer.io-like latency): about a minute.
# Writes the report and the plot the README shows; `ciotrack demo` (the older throughput run) stays.
demo: install
	$(PY) -m ciotrack loadtest --preset peak --print-every 5 --allow-dropped \
		--report docs/demo-report.json --plot docs/demo-plot.png

test: install lint-py test-rust test-pythons test-py typecheck

test-rust: $(STAMP)
	env -u PYO3_PYTHON cargo test --quiet -p ciotrack-core
	@test "$$(cargo tree -p ciotrack-core | grep -c pyo3)" = 0 || { echo "ciotrack-core depends on pyo3"; exit 1; }
	cargo test --quiet -p ciotrack-py

# The binding compiles for every CPython the package claims, not only the venv's: a PyO3 config per
# version (no interpreter needed; t = free-threaded). The tests themselves run on the venv's Python.
# One target dir for all of them: only pyo3's own crates and the binding are rebuilt per version.
CHECK_PYTHONS := 3.12 3.13 3.14 3.14t

test-pythons:
	@for v in $(CHECK_PYTHONS); do \
		cfg=target/pyo3-check/$$v.cfg; mkdir -p target/pyo3-check; \
		printf 'implementation=CPython\nversion=%s\nshared=true\nabi3=false\npointer_width=64\n' "$${v%t}" > $$cfg; \
		case $$v in *t) echo build_flags=Py_GIL_DISABLED >> $$cfg;; esac; \
		echo "cargo clippy for CPython $$v"; \
		PYO3_CONFIG_FILE=$(abspath target/pyo3-check)/$$v.cfg CARGO_TARGET_DIR=target/pyo3-check \
			cargo clippy --quiet -p ciotrack-py --features extension-module -- -D warnings || exit 1; \
	done

test-py: build
	$(PY) -m pytest -q

typecheck: build
	$(PY) -m mypy --strict
	$(PY) -m mypy.stubtest ciotrack._core

# Wheels that install on glibc >= 2.17 (Debian 10+, Ubuntu 18.04+, Amazon Linux 2, RHEL 7+): zig links
# against the manylinux2014 glibc symbols whatever this machine's glibc is (a plain `maturin build`
# tags the wheel with the build machine's glibc, e.g. manylinux_2_34). Only the build tools are
# installed for this target (maturin and zig from PyPI), not the dev extra. maturin finds zig as
# `python3 -m ziglang`, hence the venv's bin first on PATH. One wheel per interpreter: the venv's.
WHEEL_TOOLS := $(VENV)/.wheel-tools

$(WHEEL_TOOLS):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'maturin>=1.7,<2' 'ziglang>=0.11'
	touch $@

# WHEEL_DIR: where the wheel and sdist go (the Dockerfile's build stage runs this very target with
# VENV=/opt/build WHEEL_DIR=/wheels).
WHEEL_DIR ?= dist

wheel: $(WHEEL_TOOLS)
	rm -f $(WHEEL_DIR)/ciotrack-*.whl $(WHEEL_DIR)/ciotrack-*.tar.gz
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin build --release --compatibility manylinux2014 \
		--zig --interpreter $(PY) --out $(WHEEL_DIR)
	$(VENV)/bin/maturin sdist --out $(WHEEL_DIR)
	ls -l $(WHEEL_DIR)

# Peers live in venvs of their own: customerio-cdp-analytics installs the module `customerio` too and
# would shadow the official client (see benches/README.md).
PEERS_VENV := .venv-peers
CDP_VENV   := .venv-cdp

bench: install bench-core bench-py bench-peers

bench-core: $(STAMP)
	env -u PYO3_PYTHON cargo bench -p ciotrack-core --bench core -- --noplot $(if $(QUICK),--warm-up-time 1 --measurement-time 1)

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
	cargo clippy --workspace --all-targets -- -D warnings
	cargo fmt --all --check
	$(PY) -m mypy --strict

# Python style (pyproject [tool.ruff]): pyflakes, pycodestyle, isort order, bugbear, pyupgrade.
lint-py: $(STAMP)
	$(PY) -m ruff check python tests benches

clean:
	rm -rf target dist $(VENV) python/ciotrack/*.so
