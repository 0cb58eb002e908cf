# kbs — build, test and benchmark targets. CI runs .ci/run, which calls `make test`.
GO        ?= go
FUZZTIME  ?= 10s
BENCHTIME ?= 1x
GOFILES    = $(shell find . -name '*.go' -not -path './bin/*' -not -path './.git/*')

.PHONY: all build test lint fuzz bench run clean bench-tlog crash-tlog

all: build

build:
	$(GO) build -o bin/kbsd ./daemon
	$(GO) build -o bin/kbsctl ./tools/kbsctl

# The README's test command: format check, vet, and the race-enabled test suite.
test:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -timeout 20m ./...

lint: test
	$(GO) tool staticcheck ./...

# Every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg; \
	  done; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./...

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

clean:
	rm -rf bin
