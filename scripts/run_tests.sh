#!/usr/bin/env bash
# Fresh machine or not: install what is missing, with the test tools (scripts/ensure_installed.sh --dev), then the
# test suite (arguments are passed on to pytest, e.g. `bash scripts/run_tests.sh -x tests/test_codecs.py`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_installed.sh --dev
exec "${PYTHON:-python3}" -m pytest -q "${@:-tests}"
