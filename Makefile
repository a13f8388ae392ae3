# Tenantry: `make run` starts everything locally, `make test` checks everything.
CARGO ?= cargo

.PHONY: run test bench soak fmt lint prerequisites postgres chromium toolchain fuzzer clean

## Start Tenantry on a private PostgreSQL cluster under ./.tenantry (Ctrl-C stops it).
run: prerequisites
	$(CARGO) run --quiet --bin tenantry -- dev

## Formatting, lints, and every test (unit, real PostgreSQL clusters, real HTTP).
test: prerequisites
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) test --workspace --locked --doc && \
		$(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi

## Benchmarks (release build); each prints a table and writes target/bench/<name>.json.
bench: prerequisites
	$(CARGO) bench -p tenantry-bench

## The soak (not part of `make test`): SOAK_MINUTES (default 10) of mixed traffic with
## churn over two routers and two servers; writes target/soak/report.json and chart.svg.
SOAK_MINUTES ?= 10
soak: prerequisites
	SOAK_MINUTES=$(SOAK_MINUTES) $(CARGO) test --release --locked -p tenantry-cli --test e2e_soak -- --ignored --nocapture

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

prerequisites: postgres chromium toolchain fuzzer

## PostgreSQL server binaries (installs Debian's `postgresql` package when root and missing).
postgres:
	@scripts/ensure-postgres.sh

## Headless Chromium and chromedriver for the console's browser tests (installs Debian's
## `chromium` and `chromium-driver` when root and missing).
chromium:
	@scripts/ensure-chromium.sh

## rustfmt and clippy, when the toolchain came without them.
toolchain:
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

## schemathesis (tests/fuzz.rs), pinned in requirements-fuzz.txt, in a project-local venv;
## reinstalled when the pin changes.
FUZZ_VENV := .venv-fuzz
PYTHON ?= python3

fuzzer: $(FUZZ_VENV)/.installed

$(FUZZ_VENV)/.installed: requirements-fuzz.txt
	@test -x $(FUZZ_VENV)/bin/pip || $(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-fuzz.txt
	@touch $@

clean:
	$(CARGO) clean
	rm -rf .tenantry $(FUZZ_VENV)
