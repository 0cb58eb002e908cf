#!/usr/bin/env bash
# Prints the path of Debian's headless-capable chromium, installing the
# package with apt-get when it is missing (as root, as CI runs). Used by
# make test-report and make report-demo.
set -euo pipefail
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "chromium.sh: chromium is not installed; run: sudo apt-get install chromium" >&2
    exit 2
  fi
  echo "chromium.sh: installing Debian's chromium package" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi
command -v chromium
