#!/usr/bin/env bash
# trillian.sh — run a private Trillian log (trillian_log_server +
# trillian_log_signer on PostgreSQL) on loopback, for tests, benchmarks and
# demos of kbs's Trillian log backend.
#
#   scripts/trillian.sh up      start PostgreSQL, load Trillian's schema, start
#                               the log server and signer, create a tree
#                               (PREORDERED_LOG: kbs orders the entries); prints
#                               the environment (see `env`)
#   scripts/trillian.sh env     print the environment of the running stack:
#                               KBS_TRILLIAN_ADDR, KBS_TRILLIAN_TREE_ID, and
#                               (when openssl is there) KBS_TRILLIAN_TLS_ADDR,
#                               KBS_TRILLIAN_TLS_CA: a second log server
#                               speaking TLS with a throwaway certificate
#   scripts/trillian.sh newtree create one more tree, print its id
#   scripts/trillian.sh down    stop everything and delete the run directory
#   scripts/trillian.sh build   only build (or find) the Trillian binaries
#
# Nothing here touches the system's PostgreSQL service: the script runs its
# own cluster in a temporary directory (named in $TRILLIAN_RUN_DIR, default
# .cache/trillian in the repository), listening only on 127.0.0.1, as the
# `postgres` user when run as root. Missing
# PostgreSQL is installed from Debian's packages with apt-get (root only).
#
# Trillian's binaries are built from the module cache at the version go.mod
# pins, once, into $KBS_CACHE_DIR/trillian-<version>/bin (default
# ~/.cache/kbs), so clean clones on the same machine reuse them.
#
# Environment (all optional):
#   TRILLIAN_RUN_DIR   run directory (database, logs, pid files, env file)
#   KBS_CACHE_DIR      cache of built binaries
#   TRILLIAN_RPC_PORT, TRILLIAN_HTTP_PORT,
#   TRILLIAN_SIGNER_HTTP_PORT   loopback ports (default: the first free ones
#                               from a random base in 28090-32089; the
#                               signer's own gRPC port is the next free one).
#                               PostgreSQL listens on a unix socket only.
#   TRILLIAN_TREE_TYPE          PREORDERED_LOG (default) or LOG (Trillian orders
#                               the entries: the slower mode of older kbs trees)
#   TRILLIAN_SEQUENCER_INTERVAL signer's pass interval (default 100ms, Trillian's
#                               own). kbs's appends to a pre-ordered tree do not
#                               wait for the signer; its reads of the newest
#                               entries, and every append to a LOG tree, do.
#                               make test-trillian uses 10ms.
#   TRILLIAN_BATCH_SIZE         leaves per sequencing pass (default 10000)
#
# The servers run with --quota_system=noop: a private test stack needs no
# admission control (production deployments may prefer Trillian's quotas).
# PostgreSQL runs with random_page_cost=1.1 (the usual setting for SSDs): with
# the default 4, it plans the duplicate checks of Trillian's
# add_sequenced_leaves() as sequential scans of SequencedLeafData, and every
# write to a pre-ordered tree costs time in proportion to the whole table
# (docs/scale-out.md).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
run_dir="${TRILLIAN_RUN_DIR:-$repo/.cache/trillian}"
cache_root="${KBS_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/kbs}"
export PATH="/usr/local/go/bin:$PATH"

die() { echo "trillian.sh: $*" >&2; exit 1; }
log() { echo "trillian.sh: $*" >&2; }

trillian_version() {
  (cd "$repo" && go list -m -f '{{.Version}}' github.com/google/trillian)
}

bin_dir() { echo "$cache_root/trillian-$(trillian_version)/bin"; }

# build makes sure trillian_log_server, trillian_log_signer and createtree
# exist for the pinned version; it builds them inside Trillian's own module
# (its go.mod and go.sum), so none of its dependencies enter kbs's module.
build() {
  local v dir out
  v="$(trillian_version)"
  out="$(bin_dir)"
  if [ -x "$out/trillian_log_server" ] && [ -x "$out/trillian_log_signer" ] && [ -x "$out/createtree" ]; then
    echo "$out"
    return
  fi
  dir="$(cd "$repo" && go mod download -json "github.com/google/trillian@$v" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$dir" ] || die "couldn't find github.com/google/trillian@$v in the module cache"
  log "building Trillian $v binaries into $out (first time only; a few minutes)"
  # Several checkouts may build at once: each builds into its own directory
  # and the first to finish publishes it; a published directory is never
  # replaced, since running servers may use it.
  local tmp
  mkdir -p "$(dirname "$out")"
  tmp="$(mktemp -d "$out.tmp.XXXXXX")"
  (cd "$dir" && GOFLAGS=-mod=readonly go build -trimpath -o "$tmp/" \
    ./cmd/trillian_log_server ./cmd/trillian_log_signer ./cmd/createtree) >&2 || { rm -rf "$tmp"; die "building Trillian failed"; }
  mv -T "$tmp" "$out" 2>/dev/null || rm -rf "$tmp"
  [ -x "$out/trillian_log_server" ] || die "no Trillian binaries in $out (remove it and try again)"
  echo "$out"
}

pg_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  return 1
}

ensure_postgres() {
  if pg_bin >/dev/null; then return; fi
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed; run as root or: apt-get install postgresql"
  log "installing PostgreSQL from Debian's packages"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
  pg_bin >/dev/null || die "PostgreSQL install failed"
}

# as_db runs a command as the database's owner: PostgreSQL refuses to run as root.
as_db() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p="$1"
  while ! port_free "$p"; do p=$((p + 1)); done
  echo "$p"
}

wait_port() {
  local port="$1" what="$2" i
  for i in $(seq 1 600); do
    if ! port_free "$port"; then return; fi
    sleep 0.1
  done
  die "$what did not start listening on 127.0.0.1:$port (see $run_dir/*.log)"
}

start_bg() { # name, command...
  local name="$1"; shift
  nohup "$@" >"$run_dir/$name.log" 2>&1 &
  echo $! >"$run_dir/$name.pid"
}

create_tree() {
  local bins="$1" addr="$2" id
  id="$("$bins/createtree" --admin_server="$addr" --tree_type="${TRILLIAN_TREE_TYPE:-PREORDERED_LOG}" \
    --display_name=kbs --max_root_duration=0s 2>>"$run_dir/createtree.log")"
  [[ "$id" =~ ^[0-9]+$ ]] || die "createtree failed: $(tail -5 "$run_dir/createtree.log")"
  echo "$id"
}

up() {
  if [ -f "$run_dir/env" ]; then
    log "already running ($run_dir); use 'down' first"
    cat "$run_dir/env"
    return
  fi
  local bins pg v
  bins="$(build)"
  ensure_postgres
  pg="$(pg_bin)"
  v="$(trillian_version)"
  rm -rf "$run_dir"
  mkdir -p "$run_dir"
  chmod 755 "$run_dir"

  # From here on, a failure stops whatever was started.
  trap 'st=$?; if [ $st -ne 0 ]; then down; fi; exit $st' EXIT

  # PostgreSQL listens on a unix socket in its own directory only, so that
  # concurrent runs never race for a TCP port; Trillian's ports start at a
  # random base for the same reason (free_port checks, but another run may
  # take a port between the check and the bind).
  local pg_port=5432 rpc_port http_port signer_port signer_rpc_port
  rpc_port="${TRILLIAN_RPC_PORT:-$(free_port $((28090 + RANDOM % 4000)))}"
  http_port="${TRILLIAN_HTTP_PORT:-$(free_port $((rpc_port + 1)))}"
  signer_port="${TRILLIAN_SIGNER_HTTP_PORT:-$(free_port $((http_port + 1)))}"
  signer_rpc_port="$(free_port $((signer_port + 1)))"

  # A private cluster: loopback only, trust authentication (nothing but this
  # machine can connect), fsync and synchronous commit left on (durable).
  # The cluster lives under TMPDIR, not in the run directory: the database
  # user must be able to reach it, and the run directory may sit below a
  # private home directory.
  local pgdir
  pgdir="$(mktemp -d "${TMPDIR:-/tmp}/kbs-trillian-pg.XXXXXX")"
  echo "$pgdir" >"$run_dir/pg_dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$pgdir"
  as_db "$pg/initdb" -D "$pgdir/data" -U postgres --auth=trust -E UTF8 >"$run_dir/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -5 "$run_dir/initdb.log")"
  as_db "$pg/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgres.log" -w -t 60 \
    -o "-c listen_addresses='' -p $pg_port -c unix_socket_directories='$pgdir' -c max_connections=200 -c random_page_cost=1.1" \
    start >"$run_dir/pg_ctl.log" 2>&1 || die "PostgreSQL did not start: $(tail -5 "$pgdir/postgres.log" 2>/dev/null)"
  echo "$pg" >"$run_dir/pg_bin"

  local psql=("$pg/psql" -X -q -v ON_ERROR_STOP=1 -h "$pgdir" -p "$pg_port" -U postgres)
  "${psql[@]}" -d postgres -c "CREATE DATABASE trillian;" >/dev/null
  local dir
  dir="$(cd "$repo" && go mod download -json "github.com/google/trillian@$v" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  "${psql[@]}" -d trillian -f "$dir/storage/postgresql/schema/storage.sql" >"$run_dir/schema.log" 2>&1 ||
    die "loading Trillian's schema failed: $(tail -5 "$run_dir/schema.log")"

  local uri="postgresql:///trillian?host=$pgdir&port=$pg_port&user=postgres&sslmode=disable"
  local common=(--storage_system=postgresql --quota_system=noop --postgresql_uri="$uri" --logtostderr)
  start_bg log_server "$bins/trillian_log_server" "${common[@]}" \
    --rpc_endpoint="127.0.0.1:$rpc_port" --http_endpoint="127.0.0.1:$http_port"
  wait_port "$rpc_port" trillian_log_server
  start_bg log_signer "$bins/trillian_log_signer" "${common[@]}" \
    --force_master --election_system=noop \
    --rpc_endpoint="127.0.0.1:$signer_rpc_port" --http_endpoint="127.0.0.1:$signer_port" \
    --sequencer_interval="${TRILLIAN_SEQUENCER_INTERVAL:-100ms}" --batch_size="${TRILLIAN_BATCH_SIZE:-10000}"
  wait_port "$signer_port" trillian_log_signer

  # A second log server on the same database, serving gRPC over TLS with a
  # throwaway self-signed certificate for 127.0.0.1, to test TLS clients.
  local tls_env=""
  if command -v openssl >/dev/null; then
    local tls_port tls_http_port
    tls_port="$(free_port $((signer_rpc_port + 1)))"
    tls_http_port="$(free_port $((tls_port + 1)))"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
      -keyout "$run_dir/tls.key" -out "$run_dir/tls.pem" >"$run_dir/openssl.log" 2>&1 ||
      die "openssl failed: $(tail -3 "$run_dir/openssl.log")"
    start_bg log_server_tls "$bins/trillian_log_server" "${common[@]}" \
      --rpc_endpoint="127.0.0.1:$tls_port" --http_endpoint="127.0.0.1:$tls_http_port" \
      --tls_cert_file="$run_dir/tls.pem" --tls_key_file="$run_dir/tls.key"
    wait_port "$tls_port" "trillian_log_server (TLS)"
    tls_env="KBS_TRILLIAN_TLS_ADDR=127.0.0.1:$tls_port
KBS_TRILLIAN_TLS_CA=$run_dir/tls.pem"
  fi

  local tree
  tree="$(create_tree "$bins" "127.0.0.1:$rpc_port")"
  cat >"$run_dir/env" <<EOF
KBS_TRILLIAN_ADDR=127.0.0.1:$rpc_port
KBS_TRILLIAN_TREE_ID=$tree
KBS_TRILLIAN_POSTGRESQL_URI=$uri
KBS_TRILLIAN_RUN_DIR=$run_dir
$tls_env
EOF
  log "Trillian $v up: log server 127.0.0.1:$rpc_port, PostgreSQL on $pgdir, tree $tree"
  cat "$run_dir/env"
}

stop_pid() { # name
  local f="$run_dir/$1.pid" pid i
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -TERM "$pid" 2>/dev/null; then
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  [ -d "$run_dir" ] || { log "not running"; return; }
  stop_pid log_signer
  stop_pid log_server_tls
  stop_pid log_server
  if [ -f "$run_dir/pg_dir" ]; then
    local pgdir
    pgdir="$(cat "$run_dir/pg_dir")"
    if [ -f "$run_dir/pg_bin" ] && [ -d "$pgdir/data" ]; then
      as_db "$(cat "$run_dir/pg_bin")/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$pgdir"
  fi
  rm -rf "$run_dir"
  log "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) [ -f "$run_dir/env" ] || die "not running (scripts/trillian.sh up)"; cat "$run_dir/env" ;;
  newtree)
    [ -f "$run_dir/env" ] || die "not running (scripts/trillian.sh up)"
    # shellcheck disable=SC1091
    . "$run_dir/env"
    create_tree "$(build)" "$KBS_TRILLIAN_ADDR" ;;
  build) build ;;
  *) echo "usage: $0 up|down|env|newtree|build" >&2; exit 2 ;;
esac
