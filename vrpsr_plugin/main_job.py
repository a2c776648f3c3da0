"""The main job: does recompression-awareness pay? Real photos, real codecs, minutes on a CPU.

1. stage 1: the rate-aware codec simulator (options/main_job/stage1_simulator.yml): rate model and transform-
   quantisation proxy fitted on real x264/x265 encodes; its fidelity checks on held-out photos;
2. stage 2: a restoration net pre-trained without the codec (pretrain.yml), then trained on through the simulator
   (vrpsr.yml) or without it (baseline.yml, the non-aware baseline): same net, data, MSE loss, steps and seed;
3. §3.4: the SR -> codec -> post-processing sandwich trained jointly (post_joint.yml) against its ablation with
   the SR net frozen (post_sr_then_post.yml), same post net and steps;
4. the rate-matched comparison (``vrpsr eval``'s protocol, Eq. 1-2) on held-out photos with real x264 and x265 at
   4 source QPs: BD-rates with their reliability, paired t-tests and RD plots (results.md / rd_*.png per run);
5. with ``--gan`` (about 35 more minutes): the same VRPSR-vs-baseline pair with a GAN term beside the MSE
   (vrpsr_gan.yml / baseline_gan.yml; the discriminator judges f(g(X~), c) resp. g(X~)), and VRPSR with the
   discriminator on g(X~) (vrpsr_gan_sr.yml), compared the same way.

    python -m vrpsr_plugin.main_job [--out DIR] [--train-data DIR] [--test-data DIR] [--scale-iters F] [--gan]

Data: ../shared/data (TrainPhotos for training, CBSD68 for testing) when present beside the repository, else
scikit-image's bundled photos (a much smaller demo). The work folder defaults to the user's cache
(~/.cache/vrpsr_plugin/main_job), so nothing is written into the checkout.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
OPTIONS = REPO / 'options' / 'main_job'
SHARED_DATA = REPO.parent / 'shared' / 'data'
ITERS = {'stage1_simulator': 0, 'pretrain': 800, 'baseline': 400, 'vrpsr': 400, 'post_sr_then_post': 500,
         'post_joint': 500, 'baseline_gan': 400, 'vrpsr_gan': 400, 'vrpsr_gan_sr': 400}


def default_out() -> Path:
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(cache) / 'vrpsr_plugin' / 'main_job'


def train(root: Path, option: str, iters: int, data: Dict[str, Path], log: List[str]) -> Path:
    """One option file of options/main_job through the plugin's train entry point, in ``root``; returns its
    latest checkpoint folder. An existing finished run (its latest checkpoint) is reused."""
    name = f'main_{option}'
    models = root / 'experiments' / name / 'models'
    if (models / 'net_g_latest.pth').is_file():
        print(f'[main job] {name}: reusing {models}', flush=True)
        return models
    force = [f'train:total_iter={iters}', f'train:scheduler:total_steps={max(1, iters)}',
             f'train:scheduler:warmup_steps={min(50, iters // 10)}',
             f'logger:save_checkpoint_freq={max(1, iters)}'] + [f'datasets:{k}:dataroot_gt={v}' for k, v in data.items()]
    env = {**os.environ, 'VRPSR_ROOT': str(root),
           'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))}
    print(f'[main job] training {name} ({iters} iterations)', flush=True)
    start = time.time()
    with open(root / f'{name}.log', 'w') as handle:
        proc = subprocess.Popen([sys.executable, '-m', 'vrpsr_plugin.train', '-opt', str(OPTIONS / f'{option}.yml'),
                                 '--force_yml', *force], cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT)
        try:
            code = proc.wait()
        except BaseException:  # SIGTERM/Ctrl-C: let the child unwind (it stops its own ffmpeg children)
            proc.terminate()
            proc.wait()
            raise
    if code:
        tail = (root / f'{name}.log').read_text()[-3000:]
        raise RuntimeError(f'training {name} failed; see {root / f"{name}.log"}:\n{tail}')
    for line in (root / f'{name}.log').read_text().splitlines():
        if 'rate model fitted' in line:
            log.append(f'{name}: {line.split("INFO: ", 1)[-1]}')
    log.append(f'{name}: {iters} iterations in {time.time() - start:.0f} s')
    return models


def prepare_data(root: Path, train_data: Optional[Path], test_data: Optional[Path],
                 num_test: int) -> Dict[str, Path]:
    """Training and held-out folders: the given ones, ../shared/data's, or scikit-image's photos."""
    from vrpsr_plugin.data.demo_images import write_demo_images
    if train_data is None:
        train_data = SHARED_DATA / 'TrainPhotos'
        if not train_data.is_dir():
            train_data = root / 'datasets' / 'train'
            write_demo_images(train_data, size=128, per_photo=4)
    if test_data is None:
        shared_test = SHARED_DATA / 'CBSD68'
        test_data = root / 'datasets' / 'test'
        test_data.mkdir(parents=True, exist_ok=True)
        if shared_test.is_dir():  # an evenly spaced subset, linked, not copied
            files = sorted(shared_test.glob('*.png'))
            for src in files[::max(1, len(files) // num_test)][:num_test]:
                link = test_data / src.name
                if not link.exists():
                    link.symlink_to(src)
        elif not any(test_data.iterdir()):
            write_demo_images(test_data, size=256, per_photo=1, names=['chelsea', 'cat', 'rocket'])
    return {'train': Path(train_data).resolve(), 'test': Path(test_data).resolve()}


def evaluate(out: Path, models: Dict[str, str], post: Dict[str, str], data: Path, size: int, qps: Sequence[int],
             codecs: Sequence[str], rate_model: Optional[str] = None) -> dict:
    """``vrpsr eval``'s rate-matched protocol (mild degradation, as trained) into ``out``; ``rate_model`` (the
    stage-1 simulator) gives each rate match its first QP."""
    from vrpsr_plugin.evaluation.degrade import DegradationConfig
    from vrpsr_plugin.evaluation.metric_suite import MetricSuite
    from vrpsr_plugin.evaluation.protocol import EvalConfig, Protocol
    from vrpsr_plugin.evaluation.run import evaluate as run_eval
    cfg = EvalConfig(data=data, out=out, models=models, post=post, codecs=list(codecs), qps=list(qps), size=size,
                     degradation=DegradationConfig(kind='mild'), rate_model=rate_model)
    suite = MetricSuite.load(names=('psnr', 'psnr_y', 'ssim', 'ms_ssim'), fid_mode='off')
    return run_eval(Protocol.from_config(cfg, suite), progress=False)


def summary_lines(results: dict, method: str) -> List[str]:
    """BD-rate (with its reliability note) and the per-QP PSNR / MS-SSIM difference of ``method`` vs the baseline."""
    baseline = results['protocol']['baseline']
    lines = []
    for codec, modes in results['curves'].items():
        curve = modes['qp']
        for metric in ('psnr', 'ms_ssim'):
            bd = curve['bd_rate'][method]['raw'][metric]
            value = 'n/a' if bd['value'] is None else f'{bd["value"]:+.2f}%'
            deltas = []
            for point in curve['points']:
                m = point['methods']
                diff = m[method]['metrics']['raw'][metric]['mean'] - m[baseline]['metrics']['raw'][metric]['mean']
                p = point['ttest'][method]['raw'][metric]['p']
                deltas.append(f'QP{point["point"]}: {diff:+.{2 if metric == "psnr" else 4}f} (p={p:.2g})')
            warn = f'  ⚠ {bd["note"]}' if bd['note'] else ''
            lines.append(f'{codec:8} {metric:7} BD-rate {method} vs {baseline}: {value:>8}  |  ' + ', '.join(deltas)
                         + warn)
    return lines


def rate_match_cost(runs: Sequence[Path]) -> str:
    """Mean ``find_qp`` encodes per rate match of the evaluations in ``runs``, per codec (the identity's excluded:
    its X' is X~, whose QP is known)."""
    counts: Dict[str, List[int]] = {}
    for run in runs:
        for file in (run / 'cache' / 'items').rglob('*.json'):
            row = json.loads(file.read_text())
            if row['method'] != 'identity':
                counts.setdefault(row['codec'], []).append(int(row['num_encodes']))
    return 'rate matching (first QP: the rate model\'s q* calibrated on X~): ' + ', '.join(
        f'{codec} {sum(v) / len(v):.2f} encodes per call ({len(v)} calls)' for codec, v in sorted(counts.items()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=None, help='work folder (default ~/.cache/vrpsr_plugin/main_job)')
    parser.add_argument('--train-data', type=Path, default=None, help='training photos (default ../shared TrainPhotos)')
    parser.add_argument('--test-data', type=Path, default=None, help='held-out photos (default 16 of CBSD68)')
    parser.add_argument('--num-test', type=int, default=16, help='held-out photos taken from CBSD68')
    parser.add_argument('--size', type=int, default=256, help='center crop of the held-out photos')
    parser.add_argument('--qps', nargs='+', type=int, default=[27, 32, 37, 42], help='source QPs')
    parser.add_argument('--codecs', nargs='+', default=['libx264', 'libx265'])
    parser.add_argument('--scale-iters', type=float, default=1.0, help='multiply every training length')
    parser.add_argument('--gan', action='store_true', help='also the VRPSR-vs-baseline pair with a GAN term')
    args = parser.parse_args(argv)
    root = (args.out or default_out()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data = prepare_data(root, args.train_data, args.test_data, args.num_test)
    iters = {k: max(10, round(v * args.scale_iters)) if v else 0 for k, v in ITERS.items()}
    log: List[str] = [f'training photos: {data["train"]}; held-out photos: {data["test"]}']
    train_set = {'train': data['train']}
    sim = train(root, 'stage1_simulator', iters['stage1_simulator'], {**train_set, 'val': data['test']}, log)

    from vrpsr_plugin.evaluation.cache import read_image
    from vrpsr_plugin.evaluation.degrade import prepare_hr
    from vrpsr_plugin.evaluation.protocol import list_images
    from vrpsr_plugin.evaluation.simulator_fidelity import fidelity, format_fidelity
    from vrpsr_plugin.inference import load_model
    held_out = [prepare_hr(read_image(p), args.size) for p in list_images(data['test'])[:8]]
    fidelity_report = fidelity(load_model(str(sim / 'net_g_latest.pth')), held_out, args.codecs)
    fidelity_text = format_fidelity(fidelity_report)
    print(fidelity_text, flush=True)

    train(root, 'pretrain', iters['pretrain'], train_set, log)
    nets = {name: train(root, name, iters[name], train_set, log) / 'net_g_latest.pth'
            for name in ('baseline', 'vrpsr')}
    posts = {name: train(root, name, iters[name], train_set, log) for name in ('post_sr_then_post', 'post_joint')}
    common = dict(data=data['test'], size=args.size, qps=args.qps, codecs=args.codecs,
                  rate_model=str(sim / 'net_g_latest.pth'))
    sr = evaluate(root / 'eval_sr', {'baseline': str(nets['baseline']), 'vrpsr': str(nets['vrpsr']),
                                     'identity': 'identity'}, {}, **common)
    post = evaluate(root / 'eval_post',
                    {'sr_then_post': str(nets['baseline']), 'joint': str(posts['post_joint'] / 'net_sr_latest.pth')},
                    {'sr_then_post': str(posts['post_sr_then_post'] / 'net_g_latest.pth'),
                     'joint': str(posts['post_joint'] / 'net_g_latest.pth')}, **common)
    lines = ['', f'== Rate-matched comparison on {len(list_images(data["test"]))} held-out photos ({args.size} px, '
                 'real codecs, find_qp to the source rate; negative BD-rate = fewer bits for the same quality) ==']
    lines += summary_lines(sr, 'vrpsr') + summary_lines(post, 'joint')
    if args.gan:
        gan_nets = {name: str(train(root, name, iters[name], train_set, log) / 'net_g_latest.pth')
                    for name in ('baseline_gan', 'vrpsr_gan', 'vrpsr_gan_sr')}
        gan = evaluate(root / 'eval_gan', gan_nets, {}, **common)
        lines += summary_lines(gan, 'vrpsr_gan') + summary_lines(gan, 'vrpsr_gan_sr')
    runs = [root / run for run in ('eval_sr', 'eval_post', 'eval_gan')[:3 if args.gan else 2]]
    reports = [str(run / 'results.md') for run in runs]
    lines += ['', rate_match_cost(runs), *log, f'total wall time: {time.time() - start:.0f} s',
              f'tables, paired t-tests and RD plots: {", ".join(reports)}']
    print('\n'.join(lines), flush=True)
    (root / 'main_job.json').write_text(json.dumps({'fidelity': fidelity_report, 'summary': lines}, indent=1,
                                                   default=str))
    return 0


if __name__ == '__main__':
    from vrpsr_plugin.commands import run_command
    raise SystemExit(run_command('main_job', main))
