"""The paper's option files (App. A.1) chain correctly: the x1 Real-ESRGAN pre-training feeds stage 2 strictly,
stage 2's q-10 targets lie inside stage 1's QP grid, and the real encodes use the authors' encoder profile."""
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.models.base_model import BaseModel

from tests.conftest import REPO

OPTIONS = REPO / 'options'


def load(name):
    with open(OPTIONS / name) as handle:
        return yaml.safe_load(handle)


def test_realesrgan_pretraining_chain_loads_strictly_into_stage_2(tmp_path):
    net_opt, gan, stage2 = load('realesrnet_x1.yml'), load('realesrgan_x1.yml'), load('vrpsr_realesrgan.yml')
    assert net_opt['model_type'] == 'RealESRNetModel' and gan['model_type'] == 'RealESRGANModel'
    assert net_opt['scale'] == gan['scale'] == stage2['scale'] == 1
    assert gan['train']['optim_g']['lr'] == pytest.approx(1e-4)  # App. A.1: the official setting
    assert gan['path']['pretrain_network_g'] == f'experiments/{net_opt["name"]}/models/net_g_latest.pth'
    assert stage2['path']['pretrain_network_g'] == f'experiments/{gan["name"]}/models/net_g_latest.pth'
    # a (shrunken) pre-trained x1 RRDBNet checkpoint loads strictly into stage 2's codec-aware net
    tiny = {'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}
    plain = build_network({**gan['network_g'], **tiny})
    torch.save({'params_ema': plain.state_dict()}, tmp_path / 'net_g_latest.pth')
    aware = build_network({**stage2['network_g'], **tiny})
    BaseModel({'num_gpu': 0, 'is_train': False, 'dist': False}).load_network(
        aware, str(tmp_path / 'net_g_latest.pth'), strict=stage2['path']['strict_load_g'], param_key='params_ema')
    assert all(torch.equal(aware.state_dict()[k], v) for k, v in plain.state_dict().items())
    state = aware.state_dict()
    del state['cond_heads.heads.0.2.weight']  # some heads but not all: still an error
    with pytest.raises(RuntimeError, match='cond_heads.heads.0.2.weight'):
        aware.load_state_dict(state)


@pytest.mark.parametrize('stage2', ['vrpsr_realesrgan.yml', 'vrpsr_s3diff.yml'])
def test_stage_2_targets_lie_inside_the_stage_1_grid(stage2):
    grid = load('train_simulator.yml')['datasets']['train']['qps']
    train = load(stage2)['datasets']['train']
    low, high = train['qp_range']
    targets = range(low - train['target_qp_offset'], high - train['target_qp_offset'] + 1)
    assert min(grid) <= min(targets) and max(targets) <= max(grid), (list(targets), grid)


@pytest.mark.parametrize('name', ['train_simulator.yml', 'vrpsr_realesrgan.yml', 'vrpsr_s3diff.yml'])
def test_paper_options_encode_with_the_authors_profile(name):
    opt = load(name)
    sections = list(opt['datasets'].values())
    if opt['model_type'] == 'VRPSRModel':
        sections += [opt['val'], opt['train']]  # find_qp in validation, STE in training
    assert all(s['encode_kwargs']['profile'] == 'authors' for s in sections)


def test_authors_profile_sets_the_authors_encoders(photo):
    """'authors': vvenc preset faster, x264 medium, x265 placebo tuned for PSNR (both routes agree)."""
    from vrpsr_plugin.codecs import encode
    from vrpsr_plugin.codecs.encoders import CODECS
    assert CODECS['libx265'].options(32, None, None, 'authors')[:2] == [('preset', 'placebo'), ('tune', 'psnr')]
    image = photo[:64, :64]
    x265 = [encode(image, 'libx265', qp=32, profile='authors', route=r) for r in ('ffmpeg', 'pyav')]
    assert x265[0].num_bytes == x265[1].num_bytes
    assert x265[0].num_bytes != encode(image, 'libx265', qp=32).num_bytes  # not the default (medium)
    vvenc = encode(image, 'libvvenc', qp=37, profile='authors')
    assert vvenc.num_bytes == encode(image, 'libvvenc', qp=37, preset='faster').num_bytes
    with pytest.raises(ValueError, match='unknown encoder profile'):
        encode(image, 'libx264', qp=32, profile='fastest')
    with pytest.raises(ValueError, match='not both'):
        encode(image, 'libx264', qp=32, profile='authors', preset='slow')


def test_bank_records_its_encoder_profile(tmp_path, photo):
    from vrpsr_plugin.atomic_io import write_png
    from vrpsr_plugin.data.codec_bank import load_bank_index, prepare_bank
    write_png(tmp_path / 'img' / 'a.png', photo[:32, :32])
    prepare_bank(str(tmp_path / 'img'), str(tmp_path / 'bank'), ['libx264'], [32], workers=1, progress=False,
                 profile='authors')
    assert load_bank_index(str(tmp_path / 'bank'))['profile'] == 'authors'
    with pytest.raises(ValueError, match='encoder profile'):  # never extended with other settings
        prepare_bank(str(tmp_path / 'img'), str(tmp_path / 'bank'), ['libx264'], [37], workers=1, progress=False)
