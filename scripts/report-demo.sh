#!/usr/bin/env bash
# make report-demo: a development broker with some history (uploads,
# releases to two worker classes, manifest version 2, a deletion), then
# 'kbsctl audit --html' with the sample monitor rules, and a screenshot of
# the report by headless Chromium. Writes into OUT (default
# .cache/report-demo): report.html, report.png, audit.json (the JSON audit
# of the same log, whose numbers the report shows).
#
# Needs: bin/kbsd and bin/kbsctl (make build); chromium (scripts/chromium.sh
# installs Debian's package).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KBSD=$ROOT/bin/kbsd
KBSCTL=$ROOT/bin/kbsctl
OUT=${OUT:-$ROOT/.cache/report-demo}
for b in "$KBSD" "$KBSCTL"; do
  [ -x "$b" ] || { echo "report-demo: $b is missing: run make build" >&2; exit 2; }
done
CHROMIUM=$(scripts/chromium.sh)
mkdir -p "$OUT"
T=$(mktemp -d "${TMPDIR:-/tmp}/kbs-report-demo.XXXXXX")
KBSD_PID=""
cleanup() {
  status=$?
  [ -n "$KBSD_PID" ] && kill "$KBSD_PID" 2>/dev/null && wait "$KBSD_PID" 2>/dev/null || true
  if [ $status -ne 0 ]; then
    echo "report-demo FAILED (exit $status); files kept in $T" >&2
    tail -n 20 "$T/kbsd.log" >&2 || true
  else
    rm -rf "$T"
  fi
}
trap cleanup EXIT

"$KBSD" --dev --data "$T/kbs" >"$T/kbsd.log" 2>&1 &
KBSD_PID=$!
for _ in $(seq 1 300); do
  [ -S "$T/kbs/kbs.sock" ] && grep -q 'kbsd serving' "$T/kbsd.log" && break
  kill -0 "$KBSD_PID" 2>/dev/null || { echo "report-demo: kbsd exited" >&2; exit 1; }
  sleep 0.1
done
export KBS_ADDR=unix://$T/kbs/kbs.sock KBS_STATE=$T/state
K=("$KBSCTL" --sim-root "$T/kbs/sim/root.pem")
MF=$T/manifest.json
cp "$T/kbs/manifest.json" "$MF"
q() { "$@" >/dev/null; }

echo "report-demo: building a history on a development broker"
q "${K[@]}" verify --manifest "$MF"
for id in demo/model demo/prompts demo/eval; do
  q "${K[@]}" key put --manifest "$MF" --client-key "$T/kbs/client.key" --id "$id" --generate --out "$T/$(basename $id).key"
done
for _ in 1 2 3 4; do
  q "${K[@]}" key get --manifest "$MF" --tee sim --sim-dir "$T/kbs/sim" --id demo/model --id demo/prompts --out "$T/worker"
done
q "${K[@]}" key get --manifest "$MF" --tee sim --sim-platform tdx --sim-dir "$T/kbs/sim" --id demo/eval --out "$T/worker"
# Version 2: a class for batch workers (another measurement) that may
# receive demo/*, signed by the dev owner.
python3 - "$MF" "$T/v2.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["version"] += 1
m["previous"] = "sha256:" + __import__("hashlib").sha256(open(sys.argv[1], "rb").read()).hexdigest()
c = json.loads(json.dumps(m["workers"]["demo-worker"]))
for alt in c.get("snp", []):
    alt["measurement"] = ["ab" * 48]
c.pop("tdx", None)
m["workers"]["batch-worker"] = c
for k in m["keys"]:
    k["release_to"].append("batch-worker")
json.dump(m, open(sys.argv[2], "w"), indent=2)
PY
"$KBSCTL" manifest sign --key "$T/kbs/owner.key" "$T/v2.json" >"$T/v2.sig"
q "${K[@]}" manifest set --sig "$T/v2.sig" "$T/v2.json"
q "${K[@]}" verify --follow --manifest "$MF"
for _ in 1 2 3; do
  q "${K[@]}" key get --manifest "$MF" --tee sim --sim-dir "$T/kbs/sim" --sim-measurement "$(printf 'ab%.0s' $(seq 48))" --id demo/model --out "$T/batch"
done
q "${K[@]}" key rm --client-key "$T/kbs/client.key" --id demo/eval

NOTE_KEY=$(grep -o 'note_key="[^"]*"' "$T/kbsd.log" | head -n 1 | cut -d'"' -f2)
echo "report-demo: kbsctl audit --html $OUT/report.html --rules docs/monitor-rules.txt"
"${K[@]}" --state "$T/auditor" --json audit --note-key "$NOTE_KEY" >"$OUT/audit.json"
"${K[@]}" --state "$T/auditor2" audit --note-key "$NOTE_KEY" --html "$OUT/report.html" --rules docs/monitor-rules.txt >/dev/null
echo "report-demo: screenshot with $CHROMIUM"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$T/chromium" \
  --window-size=1280,6400 --screenshot="$OUT/report.png" "file://$OUT/report.html" >"$T/chromium.log" 2>&1
[ -s "$OUT/report.png" ] || { cat "$T/chromium.log" >&2; echo "report-demo: no screenshot" >&2; exit 1; }
printf 'report-demo OK:\n  %s\n  %s (screenshot)\n  %s (the JSON audit of the same log)\n' "$OUT/report.html" "$OUT/report.png" "$OUT/audit.json"
