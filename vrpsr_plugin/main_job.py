"""The main job on the bundled default data, on a CPU in minutes:

1. write small real photos (scikit-image's) as the training/validation data;
2. stage 1: train a tiny codec simulator on real x264/x265 outputs (options/smoke/train_simulator.yml, Eq. 6);
3. stage 2: train a tiny recompression-aware SR through it (options/smoke/vrpsr.yml, Eq. 3/7) and a non-aware
   baseline with the same backbone, data, loss and steps (options/smoke/baseline.yml);
4. report both at matched bitrate: degraded source X~ -> SR -> real codec at the QP whose rate matches the
   source's (Eq. 2, ``find_qp``) -> PSNR / LPIPS against X.

    python -m vrpsr_plugin.main_job [--out vrpsr_main_job] [--iters 40]

The trainings run BasicSR's pipeline (as ``vrpsr_plugin/train.py``) with the output folder as root. LPIPS uses
the real AlexNet backbone when torchvision's weights are in the torch hub cache, otherwise the random-backbone
stand-in (then it is labelled as such and is not the LPIPS metric).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from basicsr.archs import build_network

from vrpsr_plugin.archs.checkpoint import load_state_dict_strict, read_checkpoint, unwrap_state_dict
from vrpsr_plugin.commands import run_command
from vrpsr_plugin.data.demo_images import write_demo_images
from vrpsr_plugin.data.recompression_sr_dataset import RecompressionSRDataset
from vrpsr_plugin.losses.vrpsr_loss import build_lpips
from vrpsr_plugin.metrics.pretrained import MetricUnavailable, load_lpips
from vrpsr_plugin.models.codec_simulator_model import run_net
from vrpsr_plugin.models.vrpsr_model import real_codec

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / 'options' / 'smoke'


def train(root: Path, option: str, name: str, iters: int, extra: Sequence[str] = ()) -> None:
    """One smoke option through BasicSR's train pipeline in ``root`` (logs under root/experiments/name)."""
    force = [f'name={name}', f'train:total_iter={iters}', f'train:scheduler:total_steps={iters}',
             f'logger:save_checkpoint_freq={iters}', f'val:val_freq={iters}', *extra]
    env = {**os.environ, 'VRPSR_ROOT': str(root),
           'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))}
    env.setdefault('OMP_NUM_THREADS', '1')
    print(f'[main job] training {name} ({option}, {iters} iterations)', flush=True)
    cmd = [sys.executable, '-m', 'vrpsr_plugin.train', '-opt', str(SMOKE / option), '--force_yml', *force]
    with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate()
        except BaseException:  # SIGTERM/Ctrl-C here: SIGTERM lets the training unwind and kill its ffmpeg children
            proc.terminate()
            proc.wait()
            raise
    (root / f'{name}.log').write_text(stdout + stderr)
    if proc.returncode:
        raise RuntimeError(f'training {name} failed; see {root / f"{name}.log"}:\n{stderr[-3000:]}')


def lpips_metric() -> tuple:
    """(LPIPS module, label): the real metric when its pretrained weights load, else the random stand-in."""
    try:
        return load_lpips(), 'LPIPS'
    except MetricUnavailable:
        return build_lpips('alex', False), 'LPIPS(random backbone: not the metric)'


@torch.no_grad()
def evaluate(networks: Dict[str, torch.nn.Module], dataset: RecompressionSRDataset) -> Dict[str, Dict[str, float]]:
    """Mean bpp / PSNR / LPIPS after rate-matched real recompression (Eq. 2) for each network, plus 'source'
    (the source's own codec output X_bar, no SR)."""
    from basicsr.metrics.psnr_ssim import calculate_psnr_pt
    lpips, _ = lpips_metric()
    rows: Dict[str, List[Dict[str, float]]] = {name: [] for name in ['source', *networks]}
    for index in range(len(dataset)):
        s = dataset[index]
        lq, gt, cond = s['lq'][None], s['gt'][None], s['cond'][None]
        outputs = {'source': (s['lq_codec'][None], float(s['lq_bpp']))}
        for name, net in networks.items():
            decoded, rates = real_codec(run_net(net, lq, cond).clamp(0, 1), [s['codec']], bpps=cond[:, -1])
            outputs[name] = (decoded, rates[0])
        for name, (image, bpp) in outputs.items():
            rows[name].append({'bpp': bpp, 'psnr': float(calculate_psnr_pt(image, gt, crop_border=0)),
                               'lpips': float(lpips(image, gt, normalize=True).mean())})
    return {name: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]} for name, rs in rows.items()}


def load_net(option: str, checkpoint: Path) -> torch.nn.Module:
    import yaml
    from basicsr.utils.options import ordered_yaml
    with open(SMOKE / option) as handle:
        net_opt = yaml.load(handle, Loader=ordered_yaml()[0])['network_g']
    net = build_network(net_opt)
    load_state_dict_strict(net, unwrap_state_dict(read_checkpoint(checkpoint)))
    return net.eval()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=Path('vrpsr_main_job'), help='work folder (root of the runs)')
    parser.add_argument('--iters', type=int, default=40, help='iterations of each training')
    parser.add_argument('--qps', nargs='+', type=int, default=[32, 37, 42], help='source QPs of the report')
    args = parser.parse_args(argv)
    root = args.out.resolve()
    write_demo_images(root / 'datasets/demo/train', size=96, per_photo=2)
    write_demo_images(root / 'datasets/demo/val', size=96, per_photo=1, names=['astronaut', 'coffee'])
    val_names = ['chelsea', 'cat']  # held-out photos for the report
    write_demo_images(root / 'datasets/demo/test', size=96, per_photo=1, names=val_names)
    train(root, 'train_simulator.yml', 'smoke_train_simulator', args.iters)
    train(root, 'vrpsr.yml', 'main_vrpsr', args.iters)
    train(root, 'baseline.yml', 'main_baseline', args.iters)
    nets = {'baseline': load_net('baseline.yml', root / 'experiments/main_baseline/models/net_g_latest.pth'),
            'vrpsr': load_net('vrpsr.yml', root / 'experiments/main_vrpsr/models/net_g_latest.pth')}
    _, lpips_label = lpips_metric()
    report = {}
    for codec in ('libx264', 'libx265'):
        for qp in args.qps:
            dataset = RecompressionSRDataset({
                'dataroot_gt': str(root / 'datasets/demo/test'), 'io_backend': {'type': 'disk'}, 'codecs': [codec],
                'qps': [qp], 'gt_size': None, 'scale': 1, 'seed': 7,
                'degradation': {'resize_range': [0.5, 1.5], 'resize_range2': [0.5, 1.2]}})
            report[f'{codec}@qp{qp}'] = evaluate(nets, dataset)
    (root / 'report.json').write_text(json.dumps({'lpips': lpips_label, 'results': report}, indent=1))
    print(f'\nPost-codec quality at matched bitrate (real codec, find_qp to the source bpp); {lpips_label}')
    print(f'{"setting":<16}{"method":<10}{"bpp":>8}{"PSNR":>8}{"LPIPS":>8}')
    for setting, methods in report.items():
        for method, m in methods.items():
            print(f'{setting:<16}{method:<10}{m["bpp"]:>8.3f}{m["psnr"]:>8.2f}{m["lpips"]:>8.4f}')
    mean = {m: {k: sum(r[m][k] for r in report.values()) / len(report) for k in ('bpp', 'psnr', 'lpips')}
            for m in ('source', 'baseline', 'vrpsr')}
    print('mean            ' + '  '.join(f'{m}: bpp {v["bpp"]:.3f} PSNR {v["psnr"]:.2f} LPIPS {v["lpips"]:.4f}'
                                         for m, v in mean.items()))
    print(f'report: {root / "report.json"}; tensorboard: {root / "tb_logger"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(run_command('main_job', main))
