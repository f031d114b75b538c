#!/usr/bin/env bash
# `make demo`: Patron's whole story on the local test bed, in a few minutes (docs/demo.md).
#
#   hack/demo.sh [--keep] [--incident storm|rollout|both] [--seed N]
#   hack/demo.sh down      stop a demo that was kept running with --keep
#   hack/demo.sh status    what a kept demo runs
#
# Needs `make venv tools` (the Makefile's demo target runs them first). The test bed lives in
# $PATRON_TESTBED_DIR, default <repo>/.testbed-demo (apart from the developers' .testbed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$ROOT/.venv/bin/python
if [ ! -x "$PY" ] || [ ! -x "$ROOT/.venv/bin/patron" ]; then
  echo "demo: no virtualenv with patron in $ROOT/.venv; run: make venv tools (or simply: make demo)" >&2
  exit 1
fi
export PATRON_TESTBED_DIR=${PATRON_TESTBED_DIR:-$ROOT/.testbed-demo}
exec "$PY" "$ROOT/hack/demo/demo.py" "$@"
