"""How much can shaping a restoration net's output for the codec win at all? A reference for the main job.

The non-aware net's output is blurred by a Gaussian of width sigma(QP) before the real codec, rate-matched to the
source (Eq. 1-2, the protocol of ``vrpsr eval`` with the mild degradation); for each source QP the best sigma of a
small grid is kept (an oracle: it looks at the ground truth). Its BD-rate against the unblurred output says how much
a rate-dependent pre-filter, the simplest thing a recompression-aware net can learn, wins on these photos.

    python scripts/prefilter_headroom.py NET.pth DATA_DIR [--num 16] [--size 256] [--codecs libx264 libx265]
"""
import argparse
from pathlib import Path

import numpy as np
import torch

QPS = (27, 32, 37, 42)
SIGMAS = (0.0, 0.4, 0.55, 0.7, 0.85)


def main() -> None:
    from basicsr.metrics import calculate_psnr
    from scipy.ndimage import gaussian_filter

    from vrpsr_plugin.codecs import encode, find_qp
    from vrpsr_plugin.codecs.inputs import rgb_to_tensor, to_rgb_uint8
    from vrpsr_plugin.evaluation.bdrate import bd_rate
    from vrpsr_plugin.evaluation.cache import read_image
    from vrpsr_plugin.evaluation.degrade import DegradationConfig, degrade, prepare_hr, seed_from_name
    from vrpsr_plugin.evaluation.protocol import list_images
    from vrpsr_plugin.inference import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('net', help='a non-aware restoration checkpoint (x1)')
    parser.add_argument('data', type=Path, help='held-out photos')
    parser.add_argument('--num', type=int, default=16, help='evenly spaced photos of DATA (as the main job takes)')
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--codecs', nargs='+', default=['libx264', 'libx265'])
    args = parser.parse_args()
    net = load_model(args.net)
    files = list_images(args.data)
    files = files[::max(1, len(files) // args.num)][:args.num]
    pairs = []
    for path in files:
        hr = prepare_hr(read_image(path), args.size)
        lr = degrade(hr, 1, seed_from_name(path.name), DegradationConfig(kind='mild'))
        with torch.no_grad():
            pairs.append((hr, lr, to_rgb_uint8(net(rgb_to_tensor(lr)[None])[0].clamp(0, 1))))
    for codec in args.codecs:
        curves = {}
        for qp in QPS:
            for sigma in SIGMAS:
                rates, scores = [], []
                for hr, lr, out in pairs:
                    shaped = out if sigma == 0 else np.clip(gaussian_filter(out.astype(np.float32), (sigma, sigma, 0)),
                                                            0, 255).round().astype(np.uint8)
                    result = find_qp(shaped, codec, encode(lr, codec, qp=qp).bpp, first_qp=qp)
                    rates.append(result.bpp)
                    scores.append(calculate_psnr(hr, result.image, crop_border=0))
                curves[qp, sigma] = (float(np.mean(rates)), float(np.mean(scores)))
            print(f'{codec} QP{qp}: PSNR by sigma ' + ', '.join(f'{s}: {curves[qp, s][1]:.3f}' for s in SIGMAS),
                  flush=True)
        plain = [curves[q, 0.0] for q in QPS]
        best = [max((curves[q, s] for s in SIGMAS), key=lambda point: point[1]) for q in QPS]
        value, note = bd_rate([r for r, _ in plain], [m for _, m in plain], [r for r, _ in best], [m for _, m in best])
        print(f'{codec}: best blur per QP vs none, BD-rate on PSNR {value:+.2f}% {note}', flush=True)


if __name__ == '__main__':
    main()
