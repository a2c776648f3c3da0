import pytest
import torch
from torch import nn

from vrpsr_plugin.archs.checkpoint import load_state_dict_strict, read_checkpoint


def test_read_and_strict_load(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 3, 1))
    path = tmp_path / 'net.pth'
    torch.save({'params_ema': net.state_dict()}, path)
    state = read_checkpoint(str(path))
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 3, 1))
    load_state_dict_strict(other, state)
    assert torch.equal(other[0].weight, net[0].weight)

    bigger = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 3, 1), nn.Conv2d(3, 3, 1))
    with pytest.raises(RuntimeError, match=r'missing \(2\): 2.weight, 2.bias'):
        load_state_dict_strict(bigger, state)
    load_state_dict_strict(bigger, state, allowed_missing_prefixes=('2.',))
    with pytest.raises(RuntimeError, match=r'unexpected \(2\)'):
        load_state_dict_strict(nn.Sequential(nn.Conv2d(3, 4, 3)), state)
    with pytest.raises(RuntimeError, match='shape mismatch'):
        load_state_dict_strict(nn.Sequential(nn.Conv2d(3, 5, 3), nn.Conv2d(5, 3, 1)), state)


def test_corrupt_and_missing_checkpoint(tmp_path):
    path = tmp_path / 'broken.pth'
    torch.save({'params': nn.Conv2d(3, 3, 3).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RuntimeError, match='broken.pth'):
        read_checkpoint(str(path))
    with pytest.raises(FileNotFoundError):
        read_checkpoint(str(tmp_path / 'absent.pth'))
    torch.save({'foo': 3}, tmp_path / 'nostate.pth')
    with pytest.raises(RuntimeError, match='state dict'):
        read_checkpoint(str(tmp_path / 'nostate.pth'))
