#!/usr/bin/env bash
# The main job on the bundled default data (CPU): rate-aware codec simulator -> recompression-aware restoration
# through it vs a non-aware baseline, and the joint SR/post-processing sandwich vs SR-then-post -> rate-matched
# comparison after the real x264/x265 on held-out photos. See docs/training.md.
#   bash scripts/main_job.sh [--out DIR (default ~/.cache/vrpsr_plugin/main_job)] [--scale-iters F] [--qps ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m vrpsr_plugin.main_job "$@"
