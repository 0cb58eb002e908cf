#!/usr/bin/env bash
# The whole kbs story in one command (make demo): a development broker with a
# simulated TEE, a client that verifies it and uploads a prompt key, a worker
# that attests and fetches the key, an encrypted prompt round trip through
# the example worker, an owner rolling out manifest version 2 (signed with
# openssl and with kbsctl), a worker with a wrong measurement refused, and an
# audit of the log. Every step is checked; any failure fails the demo.
#
# Needs: bin/kbsd and bin/kbsctl (make build), openssl. KBSD_ARGS adds kbsd
# flags.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KBSD=$ROOT/bin/kbsd
KBSCTL=$ROOT/bin/kbsctl
for b in "$KBSD" "$KBSCTL"; do
  [ -x "$b" ] || { echo "demo: $b is missing: run make build" >&2; exit 2; }
done
command -v openssl >/dev/null || { echo "demo: openssl is required" >&2; exit 2; }

T=$(mktemp -d "${TMPDIR:-/tmp}/kbs-demo.XXXXXX")
KBSD_PID=""
WORKER_PID=""
cleanup() {
  status=$?
  [ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null || true
  [ -n "$KBSD_PID" ] && kill "$KBSD_PID" 2>/dev/null && wait "$KBSD_PID" 2>/dev/null || true
  if [ $status -ne 0 ]; then
    echo "demo FAILED (exit $status); kbsd log:" >&2
    tail -n 30 "$T/kbsd.log" >&2 || true
    echo "files kept in $T" >&2
  else
    rm -rf "$T"
  fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "demo: FAIL: $*" >&2; exit 1; }
# run WANT CMD...: runs CMD, shows its output, and fails unless it exits WANT.
run() {
  local want=$1; shift
  echo "\$ ${*#$ROOT/}" | sed "s#$T/##g; s#$ROOT/##g"
  set +e
  "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  set -e
  sed 's/^/  /' "$T/out"
  sed 's/^/  /' "$T/err" >&2
  [ "$rc" -eq "$want" ] || fail "'$*' exited $rc, want $want"
}
# has PATTERN: the last command's stdout+stderr contain PATTERN.
has() { grep -q -- "$1" "$T/out" "$T/err" || fail "expected output matching '$1'"; }

export KBS_STATE=$T/client-state
SIMROOT=$T/kbs/sim/root.pem

step "start kbsd --dev (simulated SNP TEE) in $T/kbs"
# KBSD_ARGS adds kbsd flags (make demo-trillian: the log on a Trillian tree).
# shellcheck disable=SC2086
"$KBSD" --dev --data "$T/kbs" --listen-tcp 127.0.0.1:0 ${KBSD_ARGS:-} >"$T/kbsd.log" 2>&1 &
KBSD_PID=$!
for _ in $(seq 1 300); do
  [ -S "$T/kbs/kbs.sock" ] && grep -q 'kbsd serving' "$T/kbsd.log" && break
  kill -0 "$KBSD_PID" 2>/dev/null || fail "kbsd exited"
  sleep 0.1
done
[ -S "$T/kbs/kbs.sock" ] || fail "kbsd did not start"
UNIX=unix://$T/kbs/kbs.sock
HTTPS=$(grep -o 'https://127\.0\.0\.1:[0-9]*' "$T/kbsd.log" | head -n 1)
[ -n "$HTTPS" ] || fail "no TCP address in the kbsd log"
echo "kbsd on $UNIX and $HTTPS"

mkdir -p "$T/client" "$T/worker" "$T/owner"
cp "$T/kbs/manifest.json" "$T/client/manifest.json"
cp "$T/kbs/manifest.json" "$T/worker/manifest.json"
K=("$KBSCTL" --sim-root "$SIMROOT")

step "client: verify the broker (unix socket, then TCP with the TLS key pinned through the evidence)"
run 0 "${K[@]}" --addr "$UNIX" verify --manifest "$T/client/manifest.json"
has "manifest      version 1"; has "SIMULATED TEE"; has "checkpoint stored"
run 0 "${K[@]}" --addr "$HTTPS" verify --manifest "$T/client/manifest.json"
has "tls key       sha256"
run 1 "$KBSCTL" --addr "$UNIX" verify --manifest "$T/client/manifest.json"
has "simulated root"

step "client: upload a generated prompt key (sealed to the attested HPKE key, signed with the client key)"
run 0 "${K[@]}" --addr "$HTTPS" key put --manifest "$T/client/manifest.json" --client-key "$T/kbs/client.key" \
  --id demo/prompt-key --generate --out "$T/client/prompt.key"
has "uploaded demo/prompt-key version 1"; has "receipt verified"
[ "$(stat -c %a "$T/client/prompt.key")" = 600 ] || fail "key file is not mode 0600"
run 0 "${K[@]}" --addr "$UNIX" key ls
has "demo/prompt-key"

step "worker: attest with simulated evidence and fetch the key"
run 0 "${K[@]}" --addr "$UNIX" --state "$T/worker-state" key get --manifest "$T/worker/manifest.json" \
  --tee sim --sim-dir "$T/kbs/sim" --id demo/prompt-key --out "$T/worker/keys"
has "released to worker class demo-worker"
cmp "$T/client/prompt.key" "$T/worker/keys/demo/prompt-key.key" || fail "the worker's key differs from the client's"
[ "$(stat -c %a "$T/worker/keys/demo/prompt-key.key")" = 600 ] || fail "worker key file is not mode 0600"
run 0 "${K[@]}" --addr "$UNIX" --state "$T/worker-state" receipt verify "$T/worker/keys/demo/prompt-key.receipt"
has "release of demo/prompt-key v1 to class demo-worker"

step "encrypted prompt round trip through 'kbsctl worker run'"
"${K[@]}" --addr "$UNIX" --state "$T/worker-state" worker run --manifest "$T/worker/manifest.json" \
  --tee sim --sim-dir "$T/kbs/sim" --id demo/prompt-key --listen 127.0.0.1:0 >"$T/worker.url" 2>"$T/worker.log" &
WORKER_PID=$!
for _ in $(seq 1 300); do
  [ -s "$T/worker.url" ] && break
  kill -0 "$WORKER_PID" 2>/dev/null || { cat "$T/worker.log" >&2; fail "worker exited"; }
  sleep 0.1
done
WORKER_URL=$(head -n 1 "$T/worker.url")
[ -n "$WORKER_URL" ] || fail "worker did not start"
cat "$T/worker.log"
echo "what is the capital of france?" >"$T/client/prompt.txt"
run 0 "$KBSCTL" prompt encrypt --key "$T/client/prompt.key" --in "$T/client/prompt.txt" --out "$T/client/prompt.enc"
grep -q "capital" "$T/client/prompt.enc" && fail "the encrypted prompt holds plaintext"
head -n 4 "$T/client/prompt.enc"
run 0 "$KBSCTL" prompt send --worker "$WORKER_URL" --key "$T/client/prompt.key" --in "$T/client/prompt.txt"
has "WHAT IS THE CAPITAL OF FRANCE?"
run 0 "$KBSCTL" prompt decrypt --key "$T/worker/keys/demo/prompt-key.key" --in "$T/client/prompt.enc"
has "what is the capital of france?"
kill "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null || true; WORKER_PID=""

step "owner: write manifest version 2 (a second owner, threshold 2), sign with openssl and with kbsctl"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/owner/owner2.key" 2>/dev/null
openssl pkey -in "$T/owner/owner2.key" -pubout -out "$T/owner/owner2.pub"
run 0 "$KBSCTL" manifest next --add-owner "$T/owner/owner2.pub" --threshold 2 --out "$T/owner/manifest-v2.json" "$T/kbs/manifest.json"
openssl dgst -sha256 -sign "$T/kbs/owner.key" "$T/owner/manifest-v2.json" | base64 -w0 >"$T/owner/v2.openssl.sig"
run 0 "$KBSCTL" manifest sign --key "$T/kbs/owner.key" "$T/owner/manifest-v2.json"
cp "$T/out" "$T/owner/v2.kbsctl.sig"
base64 -d "$T/owner/v2.kbsctl.sig" >"$T/owner/v2.kbsctl.der"
openssl dgst -sha256 -verify "$T/kbs/owner.pub" -signature "$T/owner/v2.kbsctl.der" "$T/owner/manifest-v2.json" \
  || fail "openssl does not accept the kbsctl signature"
echo "openssl verified the kbsctl signature; kbsd gets the openssl one"
openssl dgst -sha256 -sign "$T/owner/owner2.key" "$T/owner/manifest-v2.json" | base64 -w0 >"$T/owner/v2.owner2.sig"
run 1 "$KBSCTL" --addr "$UNIX" manifest set --sig "$T/owner/v2.owner2.sig" "$T/owner/manifest-v2.json"
has "introduced by version 2"
run 0 "${K[@]}" --addr "$UNIX" manifest set --sig "$T/owner/v2.openssl.sig" "$T/owner/manifest-v2.json"
has "manifest version 2"; has "inclusion verified"

step "client: the broker now runs version 2; plain verify fails, --follow accepts it through the signed chain"
run 1 "${K[@]}" --addr "$UNIX" verify --manifest "$T/client/manifest.json"
has "is not yours"
run 0 "${K[@]}" --addr "$UNIX" verify --follow --manifest "$T/client/manifest.json"
has "followed manifest version 2"; has "owners.threshold: 1 -> 2"
cmp "$T/client/manifest.json" "$T/owner/manifest-v2.json" || fail "the client's manifest was not updated to version 2"

step "a worker with a wrong measurement is refused"
cp "$T/owner/manifest-v2.json" "$T/worker/manifest.json"
run 1 "${K[@]}" --addr "$UNIX" --state "$T/worker-state" key get --manifest "$T/worker/manifest.json" \
  --tee sim --sim-dir "$T/kbs/sim" --sim-measurement "$(printf 'ab%.0s' $(seq 48))" --id demo/prompt-key --out "$T/worker/bad"
has "policy_denied"
[ ! -e "$T/worker/bad" ] || fail "a refused worker got key files"

step "auditor: fetch and verify every tile and entry, then report"
run 0 "${K[@]}" --addr "$UNIX" --state "$T/auditor-state" audit --note-key "$(grep -o 'note_key="[^"]*"' "$T/kbsd.log" | head -n 1 | cut -d'"' -f2)"
grep -Eq '^1 +1 ' "$T/out" || fail "audit does not show manifest version 1"
grep -Eq '^2 +[0-9]+ .*signatures verified' "$T/out" || fail "audit does not show manifest version 2 with verified signatures"
grep -Eq 'upload +demo/prompt-key +1 +demo-client' "$T/out" || fail "audit does not show the upload"
grep -Eq '^demo/prompt-key +1 +demo-worker +snp' "$T/out" || fail "audit does not show the release"
has "audit OK"
run 0 "${K[@]}" --addr "$UNIX" --state "$T/auditor-state" audit --csv --note-key "$(grep -o 'note_key="[^"]*"' "$T/kbsd.log" | head -n 1 | cut -d'"' -f2)"
has "release,demo/prompt-key,1"
run 0 "${K[@]}" --addr "$HTTPS" log verify
has "consistent with the stored size"

printf '\ndemo OK: verified broker, key upload, attested release, encrypted prompt round trip, manifest v2 rollout, refused worker, audit\n'
