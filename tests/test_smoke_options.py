"""The smoke options run from a fresh clone: ``vrpsr demo-data`` writes every dataroot they read."""
import re

import pytest
import yaml

from tests.conftest import REPO
from vrpsr_plugin import cli

SMOKE = sorted((REPO / 'options' / 'smoke').glob('*.yml'))


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('fresh_clone')
    assert cli.main(['demo-data', '--root', str(root)]) == 0
    return root


def dataroots(path):
    return sorted(set(re.findall(r'^\s*dataroot_\w+:\s*(\S+)', path.read_text(), re.M)))


def test_demo_data_writes_every_dataroot_of_the_smoke_options(demo_root):
    roots = {root for path in SMOKE for root in dataroots(path)}
    assert 'datasets/demo/train' in roots
    for root in roots:
        assert sorted((demo_root / root).glob('*.png')), f'{root} (read by options/smoke) is empty or missing'


@pytest.mark.parametrize('path', SMOKE, ids=lambda p: p.stem)
def test_smoke_datasets_build_and_load_from_demo_data(path, demo_root, monkeypatch):
    from basicsr.data import build_dataset
    monkeypatch.chdir(demo_root)  # dataroots are relative to where training starts, as in BasicSR
    opt = yaml.safe_load(path.read_text())
    for phase, dataset_opt in opt['datasets'].items():
        dataset = build_dataset(dict(dataset_opt, phase=phase.split('_')[0], scale=opt.get('scale', 1)))
        assert len(dataset) > 0
        assert dataset[0]['gt'].shape[0] == 3
