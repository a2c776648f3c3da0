#!/usr/bin/env bash
# The main job on the bundled default data (CPU, minutes): tiny simulator -> recompression-aware SR through it and a
# non-aware baseline (same backbone and steps) -> post-codec quality at matched bitrate. See docs/training.md.
#   bash scripts/main_job.sh [--out vrpsr_main_job] [--iters 40] [--qps 32 37 42]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m vrpsr_plugin.main_job "$@"
