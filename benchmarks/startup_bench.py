"""Start-up time of the CLI, the codec layer and the plugin, each in a fresh interpreter, against references
measured in the same run (an empty interpreter and ``import torch``).

    python benchmarks/startup_bench.py [--runs 7]

Commands run interleaved (one of each per round), so load on a shared machine hits all of them alike; the table
gives the median wall time of ``--runs`` rounds and its ratio to ``python -c pass`` and to ``import torch``.
Targets (issue 16): ``vrpsr --help`` < 1 s, ``import vrpsr_plugin.codecs`` < 0.5 s, ``import vrpsr_plugin`` < 2 s.
"""
import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
_REGISTERED = ('import vrpsr_plugin; from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY; '
               "ARCH_REGISTRY.get('CodecAwareS3Diff'); MODEL_REGISTRY.get('VRPSRModel')")


def commands() -> Dict[str, List[str]]:
    py = [sys.executable, '-c']
    vrpsr = shutil.which('vrpsr')
    return {
        'python -c pass (reference)': py + ['pass'],
        'import torch (reference)': py + ['import torch'],
        'vrpsr --help': [vrpsr, '--help'] if vrpsr else [sys.executable, '-m', 'vrpsr_plugin.cli', '--help'],
        'import vrpsr_plugin.codecs': py + ['import vrpsr_plugin.codecs'],
        'import vrpsr_plugin': py + ['import vrpsr_plugin'],
        'import vrpsr_plugin + BasicSR registries': py + [_REGISTERED],
    }


def wall(cmd: List[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=7)
    args = parser.parse_args()
    cmds = commands()
    for cmd in cmds.values():  # warm the file cache once
        wall(cmd)
    times: Dict[str, List[float]] = {name: [] for name in cmds}
    for _ in range(args.runs):
        for name, cmd in cmds.items():
            times[name].append(wall(cmd))
    med = {name: statistics.median(t) for name, t in times.items()}
    bare, torch_ = med['python -c pass (reference)'], med['import torch (reference)']
    print(f'{"command":45s} {"median s":>9s} {"x pass":>8s} {"x torch":>8s}   (runs={args.runs})')
    for name, m in med.items():
        print(f'{name:45s} {m:9.3f} {m / bare:8.2f} {m / torch_:8.2f}')


if __name__ == '__main__':
    main()
