#!/usr/bin/env bash
# Run scripts/install.sh only if something it installs is missing: torch, torchvision, basicsr, every entry of
# requirements.txt in its range, this checkout installed as the vrpsr_plugin package, and (--dev) pytest and Ray.
# Idempotent, and about a second when everything is there.
#   bash scripts/ensure_installed.sh [--dev] [--check]     (--check: only say what is missing; status 1 if any)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
check=0
for arg in "$@"; do [[ $arg == --check ]] && check=1; done
if missing=$($PY - "$@" 2>&1 <<'PYEOF'
import importlib.metadata as md
import json
import pathlib
import re
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # then presence only; install.sh brings packaging
    Requirement = None
lines = [line.strip() for line in pathlib.Path('requirements.txt').read_text().splitlines()]
reqs = ['torch', 'torchvision', 'basicsr'] + [line for line in lines if line and not line.startswith('#')]
reqs += ['pytest', 'pytest-timeout', 'psutil', 'ray'] if '--dev' in sys.argv else []  # extras dev + cluster
missing = []
for req in reqs:
    try:
        have = md.version(re.split(r'[<>=!~;\[ ]', req, maxsplit=1)[0])
    except md.PackageNotFoundError:
        missing.append(req)
        continue
    if Requirement is not None and not Requirement(req).specifier.contains(have, prereleases=True):
        missing.append(f'{req} (have {have})')
try:  # this checkout, installed editable (the `vrpsr` command and the package's metadata)
    url = json.loads(md.distribution('vrpsr_plugin').read_text('direct_url.json') or '{}').get('url', '')
    here = url == pathlib.Path.cwd().resolve().as_uri()
except md.PackageNotFoundError:
    here = False
missing += [] if here else [f'vrpsr_plugin (editable install of {pathlib.Path.cwd()})']
sys.exit(', '.join(missing) if missing else 0)
PYEOF
); then
    exit 0
fi
echo "missing: $missing"
(( check )) && exit 1
echo "running scripts/install.sh"
bash scripts/install.sh
