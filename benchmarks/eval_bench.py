"""Cost of the `vrpsr eval` protocol (§4.1) per image and codec, and what its cache saves.

Real photos (skimage), a tiny x2 SRVGGNetCompact (random weights; its speed, not its quality, matters here) and the
identity reference, 4 source QPs, rate-matched recompression, PSNR/PSNR-Y/SSIM (+ MS-SSIM at >= 161 px).
Run: python benchmarks/eval_bench.py [--size 256] [--codecs libx264 libx265] [--repeats 3]
Prints medians over repeats: seconds per image per codec for a cold run (empty cache) and a warm rerun (everything
cached), and their ratio.
"""
import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch
from skimage import data as skdata

import vrpsr_plugin  # noqa: F401  (before basicsr: CPU torchvision compat)
from basicsr.archs.srvgg_arch import SRVGGNetCompact  # noqa: E402
from vrpsr_plugin.evaluation import EvalConfig, MetricSuite, Protocol, evaluate

PHOTOS = {'astronaut': skdata.astronaut, 'coffee': skdata.coffee, 'chelsea': skdata.chelsea}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--codecs', nargs='+', default=['libx264', 'libx265'])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (this machine is shared)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=16, num_conv=4, upscale=2).eval()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, 'data')
        data.mkdir()
        for name, load in PHOTOS.items():
            cv2.imwrite(str(data / f'{name}.png'), load()[..., :3][..., ::-1])
        cold, warm = [], []
        for repeat in range(args.repeats):
            out = Path(tmp, f'out{repeat}')
            cfg = EvalConfig(data=data, out=out, models={'identity': 'identity', 'tiny': 'tiny'}, codecs=args.codecs,
                             qps=[27, 32, 37, 42], size=args.size)
            runs = []
            for _ in range(2):
                suite = MetricSuite(names=('psnr', 'psnr_y', 'ssim', 'ms_ssim'), fid_mode='off')
                protocol = Protocol(cfg, {'identity': None, 'tiny': net}, suite,
                                    restore=lambda model, x, cond, tile=0: model(x))
                start = time.perf_counter()
                evaluate(protocol, progress=False)
                runs.append(time.perf_counter() - start)
            cold.append(runs[0])
            warm.append(runs[1])
            shutil.rmtree(out)
    per = len(PHOTOS) * len(args.codecs)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f'{len(PHOTOS)} images of {args.size} px, codecs {args.codecs}, 4 QPs, 2 methods, {args.repeats} repeats, '
          f'{args.threads} torch thread(s)')
    print(f'cold run (empty cache): {c / per:.3f} s per image per codec (median total {c:.2f} s)')
    print(f'warm rerun (all cached): {w / per:.3f} s per image per codec (median total {w:.2f} s)')
    print(f'cache saves {100 * (1 - w / c):.1f}% (cold / warm = {c / w:.1f}x)')


if __name__ == '__main__':
    main()
