#!/usr/bin/env bash
# Fresh machine or not: install what is missing (scripts/ensure_installed.sh), then the main job on the bundled
# default data (scripts/main_job.sh; arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_installed.sh
exec bash scripts/main_job.sh "$@"
