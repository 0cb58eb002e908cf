#!/usr/bin/env bash
# The whole kbs story in one command (make demo): a development broker with a
# simulated TEE, a client that verifies it and uploads a prompt key, a worker
# that attests and fetches the key, an encrypted prompt round trip through
# the example worker, an owner rolling out manifest version 2 (signed with
# openssl and with kbsctl), a worker with a wrong measurement refused, an
# audit of the log, an application's OpenAI-style requests (one streamed)
# through the client proxy (kbsctl proxy) to the worker's echo model, and an
# upgrade by handover (a manifest version listing the new build's
# measurement; the new broker takes over the master key and the log; the
# same keys from it). Every step is checked; any failure fails the demo.
#
# Every command is printed as it runs, with the real paths: run from the
# repository's top directory, each can be pasted into a shell. The files stay
# in DEMO_DIR (default kbs-demo) after the demo; the next demo replaces them.
# Commands that are meant to fail say so: "(expected: exit 1, ...)".
#
# Needs: bin/kbsd and bin/kbsctl (make build), openssl, curl. KBSD_ARGS adds
# kbsd flags (make demo-trillian). With DEMO_WITNESS=1 (make demo-witness),
# the dev manifest names a real witness, transparency-dev's omniwitness run
# by scripts/witness.sh: every checkpoint and receipt the clients rely on
# carries its cosignature, and the demo shows what a witness outage does.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DEMO_DIR:-kbs-demo}
for b in bin/kbsd bin/kbsctl; do
  [ -x "$b" ] || { echo "demo: $b is missing: run make build" >&2; exit 2; }
done
command -v openssl >/dev/null || { echo "demo: openssl is required" >&2; exit 2; }
command -v curl >/dev/null || { echo "demo: curl is required" >&2; exit 2; }
if [ -e "$D" ]; then
  [ -e "$D/.kbs-demo" ] || { echo "demo: $D exists and is not a previous demo's directory: set DEMO_DIR" >&2; exit 2; }
  rm -rf "$D"
fi
mkdir -p "$D/client" "$D/worker" "$D/owner"
touch "$D/.kbs-demo"

KBSD_PID=""
WORKER_PID=""
WITNESS_DIR=""
PROXY_PID=""
NEW_PID=""
cleanup() {
  status=$?
  [ -n "$WITNESS_DIR" ] && scripts/witness.sh down "$WITNESS_DIR" 2>/dev/null || true
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null || true
  [ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null || true
  [ -n "$KBSD_PID" ] && kill "$KBSD_PID" 2>/dev/null && wait "$KBSD_PID" 2>/dev/null || true
  [ -n "$NEW_PID" ] && kill "$NEW_PID" 2>/dev/null && wait "$NEW_PID" 2>/dev/null || true
  if [ $status -ne 0 ]; then
    echo "demo FAILED (exit $status); kbsd log:" >&2
    tail -n 30 "$D/kbsd.log" >&2 || true
  fi
  echo
  echo "The demo's files are in $D/ (kbsd's log: $D/kbsd.log). kbsd is stopped; to go on with the"
  echo "printed commands, start it again: bin/kbsd --dev --data $D/kbs --listen-tcp 127.0.0.1:8443"
  echo "(the unix:// commands work as printed; for https:// ones use the address kbsd prints)"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "demo: FAIL: $*" >&2; exit 1; }
# quote ARGS...: the arguments as one shell command line.
quote() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
  done
  printf '%s' "${out% }"
}
# run WANT [WHY] -- CMD...: prints CMD, runs it, shows its output, and fails
# unless it exits WANT. WHY says why a failure is expected.
run() {
  local want=$1 why=""; shift
  if [ "$1" != "--" ]; then why=$1; shift; fi
  shift
  local line
  line=$(quote "$@")
  if [ "$want" -ne 0 ]; then line+="    # (expected: exit $want, $why)"; fi
  echo "\$ $line"
  set +e
  "$@" >"$D/out" 2>"$D/err"
  local rc=$?
  set -e
  sed 's/^/  /' "$D/out"
  sed 's/^/  /' "$D/err"
  [ "$rc" -eq "$want" ] || fail "'$line' exited $rc, want $want"
}
# runsh CMDLINE: prints a shell command line (pipes, redirections) and runs it.
runsh() {
  echo "\$ $1"
  bash -c "set -o pipefail; $1" >"$D/out" 2>&1 || { sed 's/^/  /' "$D/out"; fail "'$1' failed"; }
  sed 's/^/  /' "$D/out"
}
# has PATTERN: the last command's stdout+stderr contain PATTERN.
has() { grep -q -- "$1" "$D/out" "$D/err" || fail "expected output matching '$1'"; }
# background NAME PIDVAR -- CMD...: prints CMD, starts it in the background
# (stdout in $D/NAME.url, stderr in $D/NAME.log, its pid in PIDVAR for the
# cleanup), waits until it prints its URL, shows its log, and sets BG_URL.
background() {
  local name=$1 pidvar=$2; shift 3
  echo "\$ $(quote "$@") > $D/$name.url &"
  : >"$D/$name.url"
  "$@" >"$D/$name.url" 2>"$D/$name.log" &
  printf -v "$pidvar" '%s' "$!"
  for _ in $(seq 1 300); do
    [ -s "$D/$name.url" ] && break
    kill -0 "${!pidvar}" 2>/dev/null || { cat "$D/$name.log" >&2; fail "$name exited"; }
    sleep 0.1
  done
  BG_URL=$(head -n 1 "$D/$name.url")
  [ -n "$BG_URL" ] || fail "$name did not start"
  sed 's/^/  /' "$D/$name.log"
}

WITNESS_ARGS=()
if [ -n "${DEMO_WITNESS:-}" ]; then
  step "a witness (omniwitness, built once by scripts/witness.sh): its key and address, for the dev manifest"
  WITNESS_DIR=$D/witness
  runsh "scripts/witness.sh keygen $WITNESS_DIR witness.kbs.test/demo > $D/witness.env"
  # shellcheck disable=SC1090,SC1091
  . "$D/witness.env"
  WITNESS_ARGS=(--dev-witness "$KBS_WITNESS_URL,$KBS_WITNESS_VKEY" --witness-retry 200ms)
fi

step "start kbsd --dev (simulated SNP TEE) with its state in $D/kbs"
echo "\$ $(quote bin/kbsd --dev --data "$D/kbs" --listen-tcp 127.0.0.1:0 ${KBSD_ARGS:-} "${WITNESS_ARGS[@]}") > $D/kbsd.log 2>&1 &"
# shellcheck disable=SC2086
bin/kbsd --dev --data "$D/kbs" --listen-tcp 127.0.0.1:0 ${KBSD_ARGS:-} "${WITNESS_ARGS[@]}" >"$D/kbsd.log" 2>&1 &
KBSD_PID=$!
for _ in $(seq 1 300); do
  [ -S "$D/kbs/kbs.sock" ] && grep -q 'kbsd serving' "$D/kbsd.log" && break
  kill -0 "$KBSD_PID" 2>/dev/null || fail "kbsd exited"
  sleep 0.1
done
[ -S "$D/kbs/kbs.sock" ] || fail "kbsd did not start"
UNIX=unix://$D/kbs/kbs.sock
HTTPS=$(grep -o 'https://127\.0\.0\.1:[0-9]*' "$D/kbsd.log" | head -n 1)
[ -n "$HTTPS" ] || fail "no TCP address in the kbsd log"
NOTE_KEY=$(grep -o 'note_key="[^"]*"' "$D/kbsd.log" | head -n 1 | cut -d'"' -f2)
echo "kbsd listens on $UNIX and $HTTPS; its log's note key is $NOTE_KEY"
SIMROOT=$D/kbs/sim/root.pem

# wait_witnessed [ADDR]: until the kbsd at ADDR (default $UNIX) acts (a
# quorum of its witnesses cosigned).
wait_witnessed() {
  for _ in $(seq 1 300); do
    bin/kbsctl --addr "${1:-$UNIX}" log witnesses >/dev/null 2>&1 && return
    sleep 0.1
  done
  fail "kbsd did not get its witness's cosignature"
}
if [ -n "$WITNESS_DIR" ]; then
  step "witness: until it knows kbsd's log, kbsd refuses changes; configure it with the log's origin and key"
  run 1 "the witness does not know the log yet" -- bin/kbsctl --addr "$UNIX" log witnesses
  has "state           checking"
  ORIGIN=${NOTE_KEY%%+*}
  runsh "scripts/witness.sh up $WITNESS_DIR $ORIGIN $NOTE_KEY witness.kbs.test/demo"
  wait_witnessed
  run 0 -- bin/kbsctl --addr "$UNIX" log witnesses
  has "state           acting"
fi

step "client and worker: their own copies of the manifest, their own state"
runsh "cp $D/kbs/manifest.json $D/client/manifest.json"
runsh "cp $D/kbs/manifest.json $D/worker/manifest.json"
echo "\$ export KBS_STATE=$D/client-state"
export KBS_STATE=$D/client-state

step "client: verify the broker (unix socket, then TCP with the TLS key pinned through the evidence)"
run 0 -- bin/kbsctl --addr "$UNIX" --sim-root "$SIMROOT" verify --manifest "$D/client/manifest.json"
has "manifest      version 1"; has "SIMULATED TEE"; has "checkpoint stored"
if [ -n "$WITNESS_DIR" ]; then has "witnesses     cosigned by witness.kbs.test-demo"; fi
run 0 -- bin/kbsctl --addr "$HTTPS" --sim-root "$SIMROOT" verify --manifest "$D/client/manifest.json"
has "tls key       sha256"
run 1 "simulated evidence is rejected without --sim-root" -- bin/kbsctl --addr "$UNIX" verify --manifest "$D/client/manifest.json"
has "simulated root"

step "client: upload a generated prompt key (sealed to the attested HPKE key, signed with the client key)"
run 0 -- bin/kbsctl --addr "$HTTPS" --sim-root "$SIMROOT" key put --manifest "$D/client/manifest.json" \
  --client-key "$D/kbs/client.key" --id demo/prompt-key --generate --out "$D/client/prompt.key"
has "uploaded demo/prompt-key version 1"; has "receipt verified"
[ "$(stat -c %a "$D/client/prompt.key")" = 600 ] || fail "key file is not mode 0600"
run 0 -- bin/kbsctl --addr "$UNIX" key ls
has "demo/prompt-key"

step "worker: attest with simulated evidence and fetch the key"
run 0 -- bin/kbsctl --addr "$UNIX" --state "$D/worker-state" --sim-root "$SIMROOT" key get --manifest "$D/worker/manifest.json" \
  --tee sim --sim-dir "$D/kbs/sim" --id demo/prompt-key --out "$D/worker/keys"
has "released to worker class demo-worker"
cmp "$D/client/prompt.key" "$D/worker/keys/demo/prompt-key.key" || fail "the worker's key differs from the client's"
[ "$(stat -c %a "$D/worker/keys/demo/prompt-key.key")" = 600 ] || fail "worker key file is not mode 0600"
RECEIPT=$(ls "$D"/worker/keys/demo/prompt-key.v1.*.receipt)
run 0 -- bin/kbsctl --addr "$UNIX" --state "$D/worker-state" receipt verify "$RECEIPT"
has "release of demo/prompt-key v1 to class demo-worker"
if [ -n "$WITNESS_DIR" ]; then has "witnesses: cosigned by witness.kbs.test-demo"; fi

step "worker: serve encrypted prompts with 'kbsctl worker run' (keys in memory only)"
background worker WORKER_PID -- bin/kbsctl --addr "$UNIX" --state "$D/worker-state" --sim-root "$SIMROOT" worker run \
  --manifest "$D/worker/manifest.json" --tee sim --sim-dir "$D/kbs/sim" --id demo/prompt-key --listen 127.0.0.1:0 \
  --receipts "$D/worker/receipts"
WORKER_URL=$BG_URL
echo "  the worker serves on $WORKER_URL"

step "client: an encrypted prompt round trip through the worker"
runsh "echo 'what is the capital of france?' > $D/client/prompt.txt"
run 0 -- bin/kbsctl prompt encrypt --key "$D/client/prompt.key" --in "$D/client/prompt.txt" --out "$D/client/prompt.enc"
grep -q "capital" "$D/client/prompt.enc" && fail "the encrypted prompt holds plaintext"
runsh "head -n 4 $D/client/prompt.enc"
run 0 -- bin/kbsctl prompt send --worker "$WORKER_URL" --key "$D/client/prompt.key" --in "$D/client/prompt.txt"
has "WHAT IS THE CAPITAL OF FRANCE?"
run 0 -- bin/kbsctl prompt decrypt --key "$D/worker/keys/demo/prompt-key.key" --in "$D/client/prompt.enc"
has "what is the capital of france?"
echo "\$ kill %?worker    # stop the worker"
kill "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null || true; WORKER_PID=""

step "owner: write manifest version 2 (a second owner, threshold 2), sign it with openssl and with kbsctl"
runsh "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $D/owner/owner2.key 2>/dev/null"
runsh "openssl pkey -in $D/owner/owner2.key -pubout -out $D/owner/owner2.pub"
run 0 -- bin/kbsctl manifest next --add-owner "$D/owner/owner2.pub" --threshold 2 --out "$D/owner/manifest-v2.json" "$D/kbs/manifest.json"
runsh "openssl dgst -sha256 -sign $D/kbs/owner.key $D/owner/manifest-v2.json | base64 -w0 > $D/owner/v2.openssl.sig"
runsh "bin/kbsctl manifest sign --key $D/kbs/owner.key $D/owner/manifest-v2.json > $D/owner/v2.kbsctl.sig"
runsh "base64 -d $D/owner/v2.kbsctl.sig > $D/owner/v2.kbsctl.der"
runsh "openssl dgst -sha256 -verify $D/kbs/owner.pub -signature $D/owner/v2.kbsctl.der $D/owner/manifest-v2.json"
echo "  openssl verified the kbsctl signature; the broker gets the openssl one"
runsh "openssl dgst -sha256 -sign $D/owner/owner2.key $D/owner/manifest-v2.json | base64 -w0 > $D/owner/v2.owner2.sig"
run 1 "version 2 must be signed by the owners of version 1, and owner2 is not one" -- \
  bin/kbsctl --addr "$UNIX" manifest set --sig "$D/owner/v2.owner2.sig" "$D/owner/manifest-v2.json"
has "introduced by version 2"
run 0 -- bin/kbsctl --addr "$UNIX" --sim-root "$SIMROOT" manifest set --sig "$D/owner/v2.openssl.sig" "$D/owner/manifest-v2.json"
has "manifest version 2"; has "inclusion verified"
run 0 -- bin/kbsctl --addr "$UNIX" manifest set --sig "$D/owner/v2.openssl.sig" "$D/owner/manifest-v2.json"
has "already active (same hash): nothing to do, nothing logged"

step "client: the broker now runs version 2; plain verify fails, --follow accepts it through the signed chain"
run 1 "the broker's manifest is no longer the client's" -- bin/kbsctl --addr "$UNIX" --sim-root "$SIMROOT" verify --manifest "$D/client/manifest.json"
has "is not yours"; has "verify --follow"
run 0 -- bin/kbsctl --addr "$UNIX" --sim-root "$SIMROOT" verify --follow --manifest "$D/client/manifest.json"
has "followed manifest version 2"; has "owners.threshold: 1 -> 2"
cmp "$D/client/manifest.json" "$D/owner/manifest-v2.json" || fail "the client's manifest was not updated to version 2"

step "a worker with a wrong measurement is refused"
runsh "cp $D/owner/manifest-v2.json $D/worker/manifest.json"
run 1 "the simulated measurement is not in the manifest" -- \
  bin/kbsctl --addr "$UNIX" --state "$D/worker-state" --sim-root "$SIMROOT" key get --manifest "$D/worker/manifest.json" \
  --tee sim --sim-dir "$D/kbs/sim" --sim-measurement "$(printf 'ab%.0s' $(seq 48))" --id demo/prompt-key --out "$D/worker/bad"
has "policy_denied"
[ ! -e "$D/worker/bad" ] || fail "a refused worker got key files"

step "auditor: fetch and verify every tile and entry, then report"
run 0 -- bin/kbsctl --addr "$UNIX" --state "$D/auditor-state" audit --note-key "$NOTE_KEY"
grep -Eq '^1 +1 ' "$D/out" || fail "audit does not show manifest version 1"
grep -Eq '^2 +[0-9]+ .*signatures verified' "$D/out" || fail "audit does not show manifest version 2 with verified signatures"
grep -Eq 'upload +demo/prompt-key +1 +demo-client' "$D/out" || fail "audit does not show the upload"
grep -Eq '^demo/prompt-key +1 +demo-worker +snp' "$D/out" || fail "audit does not show the release"
has "audit OK"
run 0 -- bin/kbsctl --addr "$UNIX" --state "$D/auditor-state" audit --csv --note-key "$NOTE_KEY"
has "release,demo/prompt-key,1"
run 0 -- bin/kbsctl --addr "$HTTPS" log verify
has "consistent with the stored size"

if [ -n "$WITNESS_DIR" ]; then
  step "witness outage: releases wait for a cosignature that does not come, then are refused; the log is not behind, so kbsd recovers by itself"
  runsh "scripts/witness.sh down $WITNESS_DIR"
  run 2 "the witness is down: the release is logged, its keys are withheld" -- \
    bin/kbsctl --addr "$UNIX" --state "$D/worker-state" --sim-root "$SIMROOT" key get --manifest "$D/worker/manifest.json" \
    --tee sim --sim-dir "$D/kbs/sim" --id demo/prompt-key --out "$D/worker/outage"
  has "witnesses_unavailable"
  run 1 "no quorum answered the last round" -- bin/kbsctl --addr "$UNIX" log witnesses
  has "unavailable"
  runsh "scripts/witness.sh up $WITNESS_DIR $ORIGIN $NOTE_KEY witness.kbs.test/demo"
  wait_witnessed
  run 0 -- bin/kbsctl --addr "$UNIX" --state "$D/worker-state" --sim-root "$SIMROOT" key get --manifest "$D/worker/manifest.json" \
    --tee sim --sim-dir "$D/kbs/sim" --id demo/prompt-key --out "$D/worker/after-outage"
  has "receipt witnesses: cosigned by witness.kbs.test-demo"
fi

WITNESSED=${WITNESS_DIR:+, every checkpoint cosigned by a real witness, a witness outage}

step "an application's OpenAI-style requests through the client proxy to the worker (the sealed OpenAI API)"
echo "  (no --upstream: the worker answers with the built-in echo model kbs-echo)"
background worker WORKER_PID -- bin/kbsctl --addr "$UNIX" --state "$D/worker-state" --sim-root "$SIMROOT" worker run \
  --manifest "$D/worker/manifest.json" --tee sim --sim-dir "$D/kbs/sim" --id demo/prompt-key --listen 127.0.0.1:0 \
  --receipts "$D/worker/receipts"
WORKER_URL=$BG_URL
background proxy PROXY_PID -- bin/kbsctl --addr "$HTTPS" --sim-root "$SIMROOT" proxy --manifest "$D/client/manifest.json" \
  --key "$D/client/prompt.key" --worker "$WORKER_URL" --listen 127.0.0.1:0
PROXY_URL=$BG_URL
echo "  applications use the OpenAI base URL $PROXY_URL/v1 (e.g. OpenAI(base_url=\"$PROXY_URL/v1\", api_key=\"unused\"))"
run 0 -- curl -sS "$PROXY_URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "kbs-echo", "messages": [{"role": "user", "content": "what is the capital of france?"}]}'
has '"content":"echo from a kbs worker: WHAT IS THE CAPITAL OF FRANCE?"'
run 0 -- curl -sSN "$PROXY_URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "kbs-echo", "stream": true, "messages": [{"role": "user", "content": "stream this answer"}]}'
has '"content":" ANSWER"'; has 'data: \[DONE\]'
run 0 -- curl -sS "$PROXY_URL/v1/models"
has '"id":"kbs-echo"'
echo "\$ kill %?proxy %?worker    # stop the proxy and the worker"
kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=""
kill "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null || true; WORKER_PID=""

if [[ "${KBSD_ARGS:-}" == *trillian* ]]; then
  printf '\n(the upgrade by handover moves the embedded log: skipped with the Trillian backend)\n'
  printf '\ndemo OK: verified broker, key upload, attested release, encrypted prompt round trip, manifest v2 rollout, refused worker, audit, OpenAI-style requests through the proxy%s\n' "$WITNESSED"
  exit 0
fi

step "upgrade by handover: the owners list the new kbsd build's measurement (version 3), then the new broker takes over"
NEWM=$(printf 'b7%.0s' $(seq 48))
run 0 -- bin/kbsctl manifest next --add-service-measurement "snp:$NEWM" --out "$D/owner/manifest-v3.json" "$D/owner/manifest-v2.json"
runsh "bin/kbsctl manifest sign --key $D/kbs/owner.key $D/owner/manifest-v3.json > $D/owner/v3.owner1.sig"
runsh "openssl dgst -sha256 -sign $D/owner/owner2.key $D/owner/manifest-v3.json | base64 -w0 > $D/owner/v3.owner2.sig"
run 0 -- bin/kbsctl --addr "$UNIX" --sim-root "$SIMROOT" manifest set --sig "$D/owner/v3.owner1.sig" --sig "$D/owner/v3.owner2.sig" "$D/owner/manifest-v3.json"
has "manifest version 3"
runsh "cp $D/owner/manifest-v2.json $D/operator-manifest.json"
echo "\$ $(quote bin/kbsd --dev --data "$D/kbs-new" --listen-tcp 127.0.0.1:0 --sim-dir "$D/kbs/sim" --sim-measurement "$NEWM" --handover-from "$UNIX" --manifest "$D/operator-manifest.json") > $D/kbsd-new.log 2>&1 &"
bin/kbsd --dev --data "$D/kbs-new" --listen-tcp 127.0.0.1:0 --sim-dir "$D/kbs/sim" --sim-measurement "$NEWM" \
  --handover-from "$UNIX" --manifest "$D/operator-manifest.json" >"$D/kbsd-new.log" 2>&1 &
NEW_PID=$!
for _ in $(seq 1 300); do
  grep -q 'kbsd serving' "$D/kbsd-new.log" && break
  kill -0 "$NEW_PID" 2>/dev/null || { cat "$D/kbsd-new.log" >&2; fail "the new kbsd exited"; }
  sleep 0.1
done
grep -q 'took over from the running broker' "$D/kbsd-new.log" || { cat "$D/kbsd-new.log" >&2; fail "the new kbsd did not take over"; }
grep 'took over' "$D/kbsd-new.log" | sed 's/^/  /'
NEWUNIX=unix://$D/kbs-new/kbs.sock
if [ -n "$WITNESS_DIR" ]; then wait_witnessed "$NEWUNIX"; fi
run 0 -- bin/kbsctl --addr "$UNIX" --sim-root "$SIMROOT" verify --follow --manifest "$D/client/manifest.json"
has "followed manifest version 3"
run 2 "the old broker handed its master key over and decides nothing any more" -- \
  bin/kbsctl --addr "$UNIX" --sim-root "$SIMROOT" key put --manifest "$D/client/manifest.json" \
  --client-key "$D/kbs/client.key" --id demo/after-handover --generate --out "$D/client/after.key"
has "handed_over"
echo "\$ kill $KBSD_PID    # stop the old broker"
kill "$KBSD_PID"; wait "$KBSD_PID" 2>/dev/null || true; KBSD_PID=""

step "client and worker: the new broker, the same log and the same keys"
run 0 -- bin/kbsctl --addr "$NEWUNIX" --sim-root "$SIMROOT" verify --follow --manifest "$D/client/manifest.json"
has "measurement   $NEWM"; has "consistent with the stored size"
run 0 -- bin/kbsctl --addr "$NEWUNIX" --state "$D/worker-state" --sim-root "$SIMROOT" verify --follow --manifest "$D/worker/manifest.json"
run 0 -- bin/kbsctl --addr "$NEWUNIX" --state "$D/worker-state" --sim-root "$SIMROOT" key get --manifest "$D/worker/manifest.json" \
  --tee sim --sim-dir "$D/kbs/sim" --id demo/prompt-key --out "$D/worker/keys-new"
cmp "$D/client/prompt.key" "$D/worker/keys-new/demo/prompt-key.key" || fail "the new broker released another key"
echo "  the new broker released the same key"
run 0 -- bin/kbsctl --addr "$NEWUNIX" --state "$D/auditor-state" audit --note-key "$NOTE_KEY"
has "master key handed over to a snp(sim) broker"; has "audit OK"

printf '\ndemo OK: verified broker, key upload, attested release, encrypted prompt round trip, manifest v2 rollout, refused worker, audit, OpenAI-style requests through the proxy, upgrade by handover%s\n' "$WITNESSED"
