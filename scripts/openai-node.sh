#!/usr/bin/env bash
# Installs the official OpenAI client library for Node.js (the npm package
# "openai", pinned below) once into ~/.cache/kbs/openai-node-<version>, and
# prints the node_modules directory that holds it (make test-openai passes
# it to TestOpenAINode as KBS_OPENAI_NODE_MODULES). Needs node and npm
# (installed from Debian when missing and running as root).
#
# openai 6.x is the newest line that supports Node.js 20 (7.x needs 22).
set -euo pipefail
VERSION=${OPENAI_NODE_VERSION:-6.30.1}
dir=${KBS_CACHE:-$HOME/.cache/kbs}/openai-node-$VERSION
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
  else
    echo "openai-node.sh: node and npm are required" >&2
    exit 2
  fi
fi
if [ ! -f "$dir/node_modules/openai/package.json" ] ||
   [ "$(node -p "require('$dir/node_modules/openai/package.json').version")" != "$VERSION" ]; then
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error "openai@$VERSION" >&2
fi
echo "$dir/node_modules"
