#!/usr/bin/env bash
# One command that sets everything up on a fresh machine (CPU torch from the local wheel on this kind of
# machine; on a GPU machine set TORCH_SPEC to the torch build you want, e.g. TORCH_SPEC="torch==2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check -q"
$PIP "${TORCH_SPEC:-torch==2.13.0}"
# The registry's torchvision is a CUDA build; --no-deps keeps it from replacing the CPU torch.
# vrpsr_plugin/compat.py makes it importable against CPU torch.
$PIP --no-deps torchvision==0.28.0
# basicsr's setup_requires would pull a CUDA torch into an isolated build env.
$PIP --no-build-isolation basicsr==1.4.2
# cluster: Ray for `--engine ray` (optional for users; installed here so its tests run)
$PIP --no-build-isolation -e ".[dev,cluster]"
$PY -c "import vrpsr_plugin, imageio_ffmpeg; print('vrpsr_plugin', vrpsr_plugin.__version__, 'ready; ffmpeg:', imageio_ffmpeg.get_ffmpeg_exe())"
