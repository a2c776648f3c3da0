"""Fast start (what is imported, not how long it takes: timings are in benchmarks/startup_bench.py).

The codec layer and ``vrpsr --help`` must not import torch; ``import vrpsr_plugin`` must not import the heavy
libraries; every name the package registers must still reach BasicSR's registries, whichever is imported first.
"""
import json
import re
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ('torch', 'basicsr', 'diffusers', 'transformers', 'peft', 'lpips', 'torchvision')
_REGISTERED = re.compile(r'@(\w+_REGISTRY)\.register\(\)\s*\n(?:@.*\n)*\s*(?:class|def)\s+(\w+)')


def registered_in_source():
    """(registry, name) of every ``@X_REGISTRY.register()`` in the package's source, read now."""
    found = []
    for path in sorted((REPO / 'vrpsr_plugin').rglob('*.py')):
        found += _REGISTERED.findall(path.read_text(encoding='utf-8'))
    return found


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def loaded_after(code: str):
    return json.loads(run_python(code + f'\nimport json, sys; print(json.dumps([m for m in {HEAVY!r} '
                                        f'if m in sys.modules]))').strip().splitlines()[-1])


def test_codec_layer_and_cli_help_do_not_import_torch():
    assert loaded_after('import vrpsr_plugin.codecs') == []
    assert loaded_after('import vrpsr_plugin') == []
    assert loaded_after('import sys; from vrpsr_plugin.cli import main\n'
                        'try:\n    main(["--help"])\nexcept SystemExit as e:\n    assert e.code == 0') == []


def test_codec_layer_still_takes_tensors_and_gives_tensors(photo):
    import torch
    from vrpsr_plugin.codecs import CodecCondition, encode
    r = encode(torch.from_numpy(photo).permute(2, 0, 1).float() / 255, 'libx264', qp=30)
    assert r.tensor().shape == (3, 128, 128) and r.tensor().dtype == torch.float32
    assert CodecCondition('libx264', r.bpp).vector().dtype == torch.float32


def test_every_registered_name_reaches_basicsr_without_heavy_libraries():
    names = registered_in_source()
    assert len(names) >= 20 and ('ARCH_REGISTRY', 'CodecAwareS3Diff') in names
    code = (f'import vrpsr_plugin\nimport basicsr.utils.registry as r\nfor reg, name in {names!r}:\n'
            f'    obj = getattr(r, reg).get(name)\n'
            f'    assert obj.__module__.startswith("vrpsr_plugin."), (reg, name, obj.__module__)')
    assert set(loaded_after(code)) & {'diffusers', 'transformers', 'peft', 'lpips'} == set()


def test_torchvision_imported_after_the_plugin_goes_through_compat():
    # basicsr 1.4.2 needs torchvision.transforms.functional_tensor; compat aliases it when torchvision is newer
    run_python('import vrpsr_plugin, torchvision, basicsr.data.degradations\n'
               'import torchvision.transforms.functional_tensor')


def test_probing_for_torchvision_does_not_use_up_the_hook():
    """diffusers/transformers probe with importlib.util.find_spec('torchvision') before importing it; the hook
    that makes torchvision importable must still run at the real import (it used to be spent on the probe)."""
    run_python('import vrpsr_plugin, importlib.util\n'
               'assert importlib.util.find_spec("torchvision") is not None\n'
               'import diffusers, torchvision, basicsr\n'
               'from basicsr.utils.registry import ARCH_REGISTRY\n'
               'assert "RateAwareCodecSimulator" in ARCH_REGISTRY')


def test_a_plugin_module_imported_first_does_not_import_itself_half_done():
    """``from vrpsr_plugin.data.codec_simulator_dataset import ...`` before anything else pulls basicsr in from
    inside that module; registration then waits for the first registry lookup instead of re-importing it."""
    code = ('from vrpsr_plugin.data.codec_simulator_dataset import CodecSimulatorDataset\n'
            'from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY\n'
            'assert DATASET_REGISTRY.get("ASSREICDataset") and "RateAwareCodecSimulator" in ARCH_REGISTRY\n'
            'print("ok")')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-2000:]
