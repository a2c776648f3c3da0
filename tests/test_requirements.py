"""Dependencies are ranges, not exact pins (they must install into an existing ComfyUI environment), and the
versions this suite runs with lie inside them. torch/torchvision/basicsr keep their pins in scripts/install.sh."""
import ast
import importlib.metadata

from packaging.requirements import Requirement

from tests.conftest import REPO


def declared():
    """Requirements of requirements.txt and setup.py's literal install_requires entries."""
    lines = [line.strip() for line in (REPO / 'requirements.txt').read_text().splitlines()]
    reqs = [line for line in lines if line and not line.startswith('#')]
    for node in ast.walk(ast.parse((REPO / 'setup.py').read_text())):
        if isinstance(node, ast.keyword) and node.arg == 'install_requires':
            reqs += [elt.value for elt in ast.walk(node.value) if isinstance(elt, ast.Constant)]
    return [Requirement(r) for r in reqs]


def test_requirements_are_ranges_that_hold_the_tested_versions():
    reqs = declared()
    assert {'diffusers', 'transformers', 'peft', 'basicsr', 'torch'} <= {r.name for r in reqs}
    for req in reqs:
        ops = {spec.operator for spec in req.specifier}
        assert not ops & {'==', '==='}, f'{req} is an exact pin'
        assert '>=' in ops, f'{req} has no lower bound'
        installed = importlib.metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f'installed {req.name} {installed} not in {req}'


def test_install_script_keeps_the_cpu_torch_pin():
    script = (REPO / 'scripts' / 'install.sh').read_text()
    assert 'torch==' in script and '--no-deps torchvision==' in script
