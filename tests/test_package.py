"""The plugin registers into BasicSR and its entry points run."""
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from vrpsr_plugin.archs.codec_embedding import CodecEmbedding
from vrpsr_plugin.codecs import CodecCondition


def test_torchvision_and_basicsr_import_through_compat():
    import basicsr.data.degradations  # imports torchvision.transforms.functional_tensor  # noqa: F401
    import torchvision
    assert torchvision.transforms.functional.to_tensor is not None


@pytest.mark.parametrize('entry', [['vrpsr_plugin/train.py'], ['-m', 'vrpsr_plugin.train'],
                                   ['vrpsr_plugin/test.py']])
def test_entry_points_reach_basicsr_option_parsing(entry):
    out = subprocess.run([sys.executable, *entry, '--help'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '-opt' in out.stdout and '--auto_resume' in out.stdout


def test_condition_prompt_and_vector():
    cond = CodecCondition('libx265', 0.2, qp=32)
    assert cond.prompt() == 'A libx265 0.2000 bpp compressed image.'
    assert cond.vector().tolist() == pytest.approx([0.0, 1.0, 0.0, 0.2])
    batch = CodecCondition.collate([cond, CodecCondition('libvvenc', 0.1)])
    assert batch.shape == (2, 4) and batch[1, 2] == 1.0
    with pytest.raises(ValueError, match='jpeg'):
        CodecCondition('jpeg', 0.3).vector()
    assert CodecCondition('jpeg', 0.3).vector(allow_unknown=True).tolist()[:3] == [0.0, 0.0, 0.0]
    for bad in (float('nan'), -0.1, float('inf')):
        with pytest.raises(ValueError, match='bpp'):
            CodecCondition('libx264', bad)


def test_codec_embedding_distinguishes_conditions():
    emb = CodecEmbedding()
    t = emb(torch.tensor([[1.0, 0, 0, 0.2], [1.0, 0, 0, 0.21], [0, 1.0, 0, 0.2]]))
    assert t.shape == (3, 256)
    assert (t[0] - t[1]).abs().max() > 1e-2 and (t[0] - t[2]).abs().max() > 1e-2
    with pytest.raises(ValueError, match='shape'):
        emb(torch.zeros(2, 3))
    with pytest.raises(ValueError, match='NaN'):
        emb(torch.tensor([[float('nan'), 0, 0, 0.1]]))
