#!/usr/bin/env bash
# witness.sh — build and run a real C2SP tlog-witness, transparency-dev's
# omniwitness, on loopback, for kbs's witness tests, benchmarks and demos.
#
#   scripts/witness.sh build
#       build (or find) omniwitness and generate_keys; prints their directory
#   scripts/witness.sh build-lite
#       build (or find) torchwood's litewitness and witnessctl (the second
#       implementation the tests run); prints their directory
#   scripts/witness.sh keygen DIR [NAME]
#       prepare a witness in DIR before the log it will witness exists:
#       its key (named NAME, default witness.kbs.test/w1) and its loopback
#       port; prints KBS_WITNESS_URL and KBS_WITNESS_VKEY, what a manifest
#       names (kbsd --dev --dev-witness "$KBS_WITNESS_URL,$KBS_WITNESS_VKEY")
#   scripts/witness.sh up DIR ORIGIN LOG_VKEY [NAME]
#       run one witness for the kbs log ORIGIN ("kbs/<log id>") whose
#       checkpoints LOG_VKEY (the log's note verifier key) signs, with its
#       state in DIR (the key and port keygen chose, if it ran); prints its
#       environment (see `env`)
#   scripts/witness.sh env DIR      print KBS_WITNESS_URL, KBS_WITNESS_VKEY,
#                                   KBS_WITNESS_NAME of the witness in DIR
#   scripts/witness.sh down DIR     stop the witness running in DIR
#
# `up` runs omniwitness. litewitness is built for the process tests in
# tlog (which start it themselves, with an ssh-agent holding its key); it
# comes from tools/litewitness, a module that requires only
# filippo.io/torchwood, into $KBS_CACHE_DIR/torchwood-<version>.
#
# The witness is omniwitness, built from its own module (tools/witness:
# its go.mod pins transparency-dev/witness at a commit pseudo-version and
# nothing of kbs), once, into $KBS_CACHE_DIR/omniwitness-<version>
# (default ~/.cache/kbs), so clean clones on the same machine reuse it.
#
# What omniwitness does with the flags given here (read from its
# cmd/omniwitness and omniwitness packages): it serves POST /add-checkpoint
# (and sign-subtree) on --listen, 127.0.0.1 only; --metrics_listen="" turns
# its Prometheus listener off (its default is :8081, every interface); no
# --rest_distro_url, --bastion_addr or --public_witness_config_url, so it
# makes no outbound connection at all. It still loads its built-in list of
# public logs, which only means it would cosign their checkpoints if
# someone sent them. Its state (the last cosigned checkpoint per log) is
# the SQLite file DIR/witness.db; the witness key is DIR/witness.key
# (made by its generate_keys, note signer format) with the verifier key
# in DIR/witness.vkey; the kbs log is named in DIR/logs.yaml
# (--additional_logs). Its output goes to DIR/witness.log.
#
# Environment (all optional):
#   KBS_CACHE_DIR       cache of built binaries
#   KBS_WITNESS_PORT    loopback port (default: the first free one from 28180)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cache_root="${KBS_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/kbs}"
export PATH="/usr/local/go/bin:$PATH"

die() { echo "witness.sh: $*" >&2; exit 1; }
log() { echo "witness.sh: $*" >&2; }

# module_version DIR MODULE prints the version of MODULE that the tools
# module in DIR requires.
module_version() {
  (cd "$repo/$1" && go list -m -f '{{.Version}}' "$2")
}

# build_tools DIR MODULE NAME CMD... builds the commands CMD (package paths
# under MODULE) inside the tools module DIR, a module of its own, so none of
# the witness's dependencies enter kbs's go.mod; into
# $cache_root/NAME-<version>, once. Prints the directory.
build_tools() {
  local dir=$1 mod=$2 name=$3 out cmd missing=0
  shift 3
  out="$cache_root/$name-$(module_version "$dir" "$mod")"
  for cmd in "$@"; do [ -x "$out/$(basename "$cmd")" ] || missing=1; done
  if [ "$missing" = 0 ]; then
    echo "$out"
    return
  fi
  log "building $* at $(module_version "$dir" "$mod") into $out (first time only; about two minutes)"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  (cd "$repo/$dir" && GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -o "$out.tmp/" "$@") >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$out"
}

build() {
  build_tools tools/witness github.com/transparency-dev/witness omniwitness \
    github.com/transparency-dev/witness/cmd/omniwitness github.com/transparency-dev/witness/cmd/generate_keys
}

build_lite() {
  build_tools tools/litewitness filippo.io/torchwood torchwood \
    filippo.io/torchwood/cmd/litewitness filippo.io/torchwood/cmd/witnessctl
}

free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

env_of() {
  local dir=$1
  [ -f "$dir/env" ] || die "no witness in $dir (run: witness.sh up $dir ...)"
  cat "$dir/env"
}

# keygen DIR NAME makes the witness key in DIR (once) and picks its port
# (once, kept in DIR/port).
keygen() {
  local dir=$1 name=${2:-witness.kbs.test/w1} bin
  bin="$(build)"
  mkdir -p "$dir"
  if [ ! -f "$dir/witness.key" ]; then
    "$bin/generate_keys" --origin "$name" --out_priv "$dir/witness.key" --out_pub "$dir/witness.vkey" 2>/dev/null
  fi
  [ -f "$dir/port" ] || echo "${KBS_WITNESS_PORT:-$(free_port 28180)}" >"$dir/port"
  printf 'KBS_WITNESS_URL=http://127.0.0.1:%s\nKBS_WITNESS_VKEY=%s\n' "$(cat "$dir/port")" "$(cat "$dir/witness.vkey")"
}

up() {
  local dir=$1 origin=$2 logkey=$3 name=${4:-witness.kbs.test/w1}
  [[ "$origin" == kbs/* ]] || die "origin $origin is not a kbs log origin (kbs/<log id>)"
  local bin port
  bin="$(build)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    die "a witness already runs in $dir (pid $(cat "$dir/pid"))"
  fi
  keygen "$dir" "$name" >/dev/null
  cat >"$dir/logs.yaml" <<EOF
Logs:
  - Origin: $origin
    PublicKey: $logkey
EOF
  port="${KBS_WITNESS_PORT:-$(cat "$dir/port")}"
  setsid "$bin/omniwitness" --listen "127.0.0.1:$port" --metrics_listen "" \
    --db_file "$dir/witness.db" --additional_logs "$dir/logs.yaml" \
    --private_key_path "$dir/witness.key" --logtostderr >"$dir/witness.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      printf 'KBS_WITNESS_URL=http://127.0.0.1:%s\nKBS_WITNESS_VKEY=%s\nKBS_WITNESS_NAME=%s\n' \
        "$port" "$(cat "$dir/witness.vkey")" "$name" >"$dir/env"
      cat "$dir/env"
      return
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { cat "$dir/witness.log" >&2; die "omniwitness exited"; }
    sleep 0.1
  done
  cat "$dir/witness.log" >&2
  die "omniwitness did not listen on 127.0.0.1:$port"
}

down() {
  local dir=$1
  if [ -f "$dir/pid" ]; then
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -f "$dir/pid" "$dir/env"
  fi
}

case "${1:-}" in
  build) build ;;
  build-lite) build_lite ;;
  keygen) [ $# -ge 2 ] || die "usage: witness.sh keygen DIR [NAME]"; keygen "$2" "${3:-}" ;;
  up) [ $# -ge 4 ] || die "usage: witness.sh up DIR ORIGIN LOG_VKEY [NAME]"; up "$2" "$3" "$4" "${5:-}" ;;
  env) [ $# -eq 2 ] || die "usage: witness.sh env DIR"; env_of "$2" ;;
  down) [ $# -eq 2 ] || die "usage: witness.sh down DIR"; down "$2" ;;
  *) die "usage: witness.sh build | build-lite | keygen DIR [NAME] | up DIR ORIGIN LOG_VKEY [NAME] | env DIR | down DIR" ;;
esac
