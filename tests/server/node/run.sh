#!/usr/bin/env bash
# Runs the API tests with the official openai client (ctest calls this with
# KITE_BIN and KITE_SHARED_DIR set). Needs node and `npm ci` here
# (scripts/setup.sh does both).
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "node is not installed; run scripts/setup.sh" >&2; exit 1; }
[ -d node_modules/openai ] || { echo "the openai npm package is missing; run scripts/setup.sh (npm ci in tests/server/node)" >&2; exit 1; }
exec node --test --test-concurrency=1 .
