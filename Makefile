# kbs — build, test and benchmark targets. CI runs .ci/run, which calls `make test`.
GO        ?= go
FUZZTIME  ?= 10s
BENCHTIME ?= 1x
GOFILES    = $(shell find . -name '*.go' -not -path './bin/*' -not -path './.git/*')

.PHONY: all build test test-future lint fuzz bench bench-release bench-keys bench-start run clean demo crash-kbsd test-trillian bench-logs demo-trillian bench-tlog crash-tlog witness test-witness bench-witness demo-witness test-report report-demo test-openai bench-inference bench-hostile

all: build

build:
	$(GO) build -o bin/kbsd ./daemon
	$(GO) build -o bin/kbsctl ./tools/kbsctl

# The README's test command: format check, vet, and the race-enabled test suite.
test:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -timeout 20m ./...

# The suite as if it ran one and five years from today: the kbs_clockskew
# build tag lets internal/clock add KBS_TEST_CLOCK_SKEW to the wall clock in
# the tests and in every kbsd/kbsctl they build. A test that passes only on
# the day its fixtures were made fails here.
test-future:
	KBS_TEST_CLOCK_SKEW=1y $(GO) test -tags kbs_clockskew -count=1 -timeout 20m ./...
	KBS_TEST_CLOCK_SKEW=5y $(GO) test -tags kbs_clockskew -count=1 -timeout 20m ./...

lint: test
	$(GO) mod tidy -diff
	$(GO) tool staticcheck ./...

# Every fuzz target for FUZZTIME each; see scripts/fuzz.sh.
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

# The Trillian log backend (tlog/trillianlog) against a real trillian_log_server
# and trillian_log_signer on a private PostgreSQL, started and stopped by
# scripts/trillian.sh (which installs PostgreSQL and builds Trillian if needed),
# on both kinds of tree, and kbsd on Trillian with a real omniwitness
# (TestRealWitnessTrillian). The signer runs every 10ms: appends to LOG trees
# wait for it.
TRILLIAN_TEST_DIR ?= $(CURDIR)/.cache/trillian-test
test-trillian:
	@set -e; export TRILLIAN_RUN_DIR=$(TRILLIAN_TEST_DIR) TRILLIAN_SEQUENCER_INTERVAL=10ms; \
	  scripts/trillian.sh down >/dev/null 2>&1 || true; \
	  env=$$(scripts/trillian.sh up); eval "$$(echo "$$env" | sed 's/^/export /')"; \
	  status=0; { $(GO) test -race -count=1 -timeout 15m -v ./tlog/trillianlog/... ./tools/trillian-migrate/ && \
	    KBS_WITNESS_BIN=$$(scripts/witness.sh build) $(GO) test -race -count=1 -timeout 5m -v -run Trillian ./daemon/ && \
	    $(GO) test -race -count=1 -timeout 10m -v -run 'TestDecideAndAppendOneStep|TestUnknownOutcomeSettles' ./kbs/; } || status=$$?; \
	  scripts/trillian.sh down; exit $$status

# Real C2SP tlog-witnesses, transparency-dev's omniwitness and torchwood's
# litewitness, each built once from its own module (tools/witness,
# tools/litewitness) into ~/.cache/kbs by scripts/witness.sh, and the
# process tests that run them: against boltlog logs (cosigning, split views,
# a restored snapshot, a witness that is down: tlog/realwitness_test.go) and
# against kbsd itself with kbsctl as client, worker and auditor (a restored
# data directory, two brokers with one log key: daemon/witness_test.go).
# `make test` skips them (the same logic runs there against in-process fake
# witnesses). CI runs test-witness.
witness:
	@scripts/witness.sh build

test-witness:
	@bin=$$(scripts/witness.sh build) && lite=$$(scripts/witness.sh build-lite) && \
	  KBS_WITNESS_BIN=$$bin KBS_LITEWITNESS_BIN=$$lite \
	  $(GO) test -race -count=1 -timeout 10m -run 'RealWitness' -v ./tlog/ ./daemon/

# Time from a signed checkpoint to the real witness's verified cosignature
# (p50/p99 over 2000 checkpoints, three runs), then releases through kbsd's
# broker with 0, 1 and 3 real omniwitnesses side by side, three runs
# (BENCHMARKS.md).
bench-witness:
	@bin=$$(scripts/witness.sh build) && lite=$$(scripts/witness.sh build-lite) && \
	  KBS_WITNESS_BIN=$$bin KBS_LITEWITNESS_BIN=$$lite \
	  $(GO) test -run '^$$' -bench 'RealWitness' -benchtime 2000x -count 3 ./tlog/ && \
	  KBS_WITNESS_BIN=$$bin $(GO) test -run '^$$' -bench 'ReleaseWitnesses' -benchtime 1x -count 3 ./kbs/

# make demo with the log on a Trillian tree (PostgreSQL + Trillian started and
# stopped by scripts/trillian.sh).
demo-trillian: build
	@set -e; export TRILLIAN_RUN_DIR=$(CURDIR)/.cache/trillian-demo; \
	  scripts/trillian.sh down >/dev/null 2>&1 || true; \
	  env=$$(scripts/trillian.sh up); eval "$$(echo "$$env" | sed 's/^/export /')"; \
	  status=0; KBSD_ARGS="--log-backend trillian --trillian-addr $$KBS_TRILLIAN_ADDR --trillian-tree-id $$KBS_TRILLIAN_TREE_ID" \
	    ./scripts/demo.sh || status=$$?; \
	  scripts/trillian.sh down; exit $$status

# Log backends side by side (boltlog, Trillian on PostgreSQL, Tessera POSIX),
# three rounds with the backends taking turns (cells: the median run, and the
# range); a separate module (bench/logs) keeps Tessera out of kbs's
# dependencies. About 5 minutes.
BENCH_LOGS_FLAGS ?= -duration 5s -rounds 3
bench-logs:
	@set -e; export TRILLIAN_RUN_DIR=$(CURDIR)/.cache/trillian-bench; \
	  scripts/trillian.sh down >/dev/null 2>&1 || true; \
	  env=$$(scripts/trillian.sh up); eval "$$(echo "$$env" | sed 's/^/export /')"; \
	  status=0; (cd bench/logs && $(GO) run . $(BENCH_LOGS_FLAGS) && \
	    $(GO) run . $(BENCH_LOGS_FLAGS) -proofs=false -c 64,512) || status=$$?; \
	  scripts/trillian.sh down; exit $$status

bench:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 60m ./...

# Release benchmarks (BENCHMARKS.md): three runs of each concurrency level,
# then the transports at 32 workers. Run them on an otherwise idle machine.
bench-release:
	$(GO) test -run '^$$' -bench 'BenchmarkRelease$$' -benchtime 1x -count 3 ./kbs
	$(GO) test -run '^$$' -bench 'BenchmarkReleaseTransport' -benchtime 1x -count 1 ./kbs

# Key store scaling (BENCHMARKS.md): upload, release, a list page and a
# restart at 1k, 10k and 100k keys and at 1, 100 and 10,000 versions of one
# key (KBS_BENCH_KEYS=1M adds a million keys: about 20 minutes); then upload
# throughput at 1, 8 and 64 concurrent clients against its crypto-bound limit.
bench-keys:
	KBS_BENCH_KEYS=$${KBS_BENCH_KEYS:-1k,10k,100k} KBS_BENCH_VERSIONS=$${KBS_BENCH_VERSIONS:-1,100,10k} \
	  $(GO) test -run '^$$' -bench 'BenchmarkKeyStore' -benchtime 50x -timeout 90m ./kbs
	$(GO) test -run '^$$' -bench 'BenchmarkUpload$$' -benchtime 1x -count 3 ./kbs

# A legitimate worker's kbsctl key get against a real kbsd (RLIMIT_NOFILE
# 256), quiet and during floods of attestations, challenges, manifest PUTs
# and idle connections from one client (BENCHMARKS.md; about a minute).
# TestFloods, in make test, checks the same floods with two key gets each.
bench-hostile:
	$(GO) test -run '^$$' -bench 'BenchmarkFlood' -benchtime 20x -timeout 10m ./tools/kbsctl

# Broker start-up (BENCHMARKS.md): New on logs of 1k and 2^20 entries, with
# the state index current, 4096 entries behind (a crash), and rebuilt from the
# whole log; builds a 2^20-entry log (about 1 GB, removed afterwards).
bench-start:
	$(GO) test -run '^$$' -bench BenchmarkStart -benchtime 3x -timeout 30m ./kbs

# Transparency-log benchmarks with enough iterations for stable figures
# (BENCHMARKS.md); builds a 2^20-entry log (about 1 GB, removed afterwards).
bench-tlog:
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./tlog/...

# The log's kill -9 test with many rounds (go test runs 6).
CRASH_ROUNDS ?= 300
crash-tlog:
	BOLTLOG_CRASH_ROUNDS=$(CRASH_ROUNDS) $(GO) test -run '^TestCrash$$' -v -timeout 60m ./tlog/boltlog

# Development broker: simulated TEE, embedded log, state in ./kbs-dev.
run: build
	./bin/kbsd --dev

# The whole story end to end against a fresh dev broker (scripts/demo.sh):
# verify, upload, attested release, encrypted prompts through the example
# worker, manifest v2 rollout (openssl and kbsctl signatures), a refused
# worker, audit, OpenAI-style requests through kbsctl proxy, and an upgrade
# by handover to a new kbsd. Every command is printed with its real paths,
# ready to paste from this directory; intentional failures say "(expected: ...)".
# The files stay in DEMO_DIR (default kbs-demo). CI runs it.
DEMO_DIR ?= kbs-demo
demo: build
	DEMO_DIR=$(DEMO_DIR) ./scripts/demo.sh

# make demo with a real witness: the dev manifest names an omniwitness that
# scripts/witness.sh builds (once) and runs; every checkpoint and receipt the
# clients rely on carries its cosignature, and the demo takes the witness
# down and up again. The files stay in DEMO_DIR (default kbs-demo). CI runs it.
demo-witness: build
	DEMO_DIR=$(DEMO_DIR) DEMO_WITNESS=1 ./scripts/demo.sh

# The audit report (kbsctl audit --html) in headless Chromium: no console
# messages, no network requests, the JSON audit's numbers in the visible
# text (kbs/audit/report TestChromium; make test runs the same checks on the
# HTML without a browser). scripts/chromium.sh installs Debian's chromium if
# needed. CI runs it.
test-report:
	@bin=$$(scripts/chromium.sh) && KBS_CHROMIUM=$$bin $(GO) test -count=1 -run 'TestChromium' -v ./kbs/audit/report/

# Encrypted inference with the official OpenAI client library for Node.js
# (npm package openai, installed once into ~/.cache/kbs by
# scripts/openai-node.sh) as the application: kbsctl proxy -> kbsctl worker
# run -> an OpenAI-compatible upstream, streamed and not, and the SDK's
# errors (tools/kbsctl TestOpenAINode; make test runs the same path with a
# Go HTTP client, TestInferenceProxy). CI runs it.
test-openai:
	@mods=$$(scripts/openai-node.sh) && KBS_OPENAI_NODE_MODULES=$$mods \
	  $(GO) test -count=1 -run 'TestOpenAINode' -v ./tools/kbsctl/

# Added latency of the proxy and worker per request and per streamed chunk,
# against calling the upstream directly (BENCHMARKS.md).
bench-inference:
	$(GO) test -run '^$$' -bench 'BenchmarkInferenceRequest' -benchtime 2000x -count 3 ./kbs/inference/
	$(GO) test -run '^$$' -bench 'BenchmarkInferenceChunk' -benchtime 200x -count 3 ./kbs/inference/

# A development broker with some history, its audit report with the sample
# monitor rules (docs/monitor-rules.txt), and a screenshot of the report by
# headless Chromium, in .cache/report-demo/ (scripts/report-demo.sh).
report-demo: build
	./scripts/report-demo.sh

# kill -9 loop against a real kbsd during concurrent releases (long version of
# TestCrashDuringReleases; CRASH_ITERATIONS cycles).
CRASH_ITERATIONS ?= 100
crash-kbsd:
	KBS_CRASH_ITERATIONS=$(CRASH_ITERATIONS) $(GO) test -count=1 -timeout 60m -run '^TestCrashDuringReleases$$' -v ./daemon

clean:
	rm -rf bin
