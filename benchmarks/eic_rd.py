"""ASSR-EIC rate-distortion benchmark (seed 002): the shipped decoder against plain codecs and rescaling baselines.

    python benchmarks/eic_rd.py [--images 6] [--size 256] [--targets 0.03,0.05,0.08,0.11,0.15] [--json out.json]
    python benchmarks/eic_rd.py --from-json out.json      # the summary again, from the saved rows

On centre crops of photos never trained on (CSet14, then CBSD68; ../shared/data), at each target bpp:

* ``x265`` / ``vvenc``: the plain codec at full size, QP from ``find_qp`` (bpp of the bitstream alone);
* ``x265_vrp``: the plain x265 at full size in the .vrp container (s = 1, no decoder): what the container alone saves;
* ``bicubic_vrp``: down-scale + x265 + bicubic up-scaling in the .vrp container, s chosen from the same grid as ours by
  the best PSNR within the same file budget (ASSR-EIC's rate control with bicubic instead of the decoder: what the
  decoder adds);
* ``realesrgan``: down-scale x4 + x265 + the released Real-ESRGAN x4plus (basicsr's RRDBNet), bitstream alone;
* ``assr_eic``: ``vrpsr eic encode`` with the decoder (whole .vrp file), dial 0.

Prints per-method mean bpp / PSNR / MS-SSIM per target, BD-rate of ``assr_eic`` (mean over images of per-image
BD-rates, pchip; images whose curves do not overlap give no BD-rate and are counted apart, images with a reliability
note from ``bd_rate`` are counted) against every other method on PSNR and MS-SSIM (also with assr_eic's bitstream
alone, container not counted, against the bitstream anchors) with a t-test of the per-image BD-rates against 0,
the paired t-test of assr_eic against ``x265_vrp`` and ``bicubic_vrp`` (same file budget) at each target, and
whether it beats ``bicubic_vrp`` at every target.
"""
import argparse
import json
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np

import vrpsr_plugin  # noqa: F401  (compat shims before basicsr)
from basicsr.metrics import calculate_psnr  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / 'shared'
GRID = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def photos(count: int, size: int) -> list:
    from vrpsr_plugin.codecs import load_image
    paths = sorted((SHARED / 'data' / 'CSet14').glob('*.png')) + sorted((SHARED / 'data' / 'CBSD68').glob('*.png'))
    out = []
    for path in paths:
        img, note = load_image(path)
        if note or min(img.shape[:2]) < size:  # skip grey (bridge) and small pictures
            continue
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        out.append((path.stem, np.ascontiguousarray(img[top:top + size, left:left + size])))
        if len(out) == count:
            break
    return out


def fit(image, codec, target):
    from vrpsr_plugin.codecs import find_qp
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        return find_qp(image, codec, target)


def upscale_bicubic(rgb, size):
    from PIL import Image
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BICUBIC))


def realesrgan():
    from basicsr.archs.rrdbnet_arch import RRDBNet

    from vrpsr_plugin.archs.checkpoint import load_state_dict_strict, read_checkpoint
    path = SHARED / 'weights' / 'RealESRGAN_x4plus.pth'
    net = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=4)
    load_state_dict_strict(net, read_checkpoint(str(path)), source=str(path))
    return net.eval()


def run_image(rgb, targets, decoder, esrgan):
    import torch
    from basicsr.utils import tensor2img

    from vrpsr_plugin.codecs.inputs import rgb_to_tensor
    from vrpsr_plugin.eic.container import EICFile
    from vrpsr_plugin.eic.pipeline import encode_image, file_size, fit_budget
    from vrpsr_plugin.eic.rescale import downscale, lr_size
    from vrpsr_plugin.metrics.msssim_metric import calculate_ms_ssim
    size = rgb.shape[:2]
    pixels = size[0] * size[1]
    vrp_size = partial(file_size, 'libx265', size[1], size[0])  # (coded (h, w), bitstream) -> .vrp bytes
    rows = []

    def add(method, target, bpp, rec, **extra):
        rows.append(dict(method=method, target=target, bpp=bpp, psnr=float(calculate_psnr(rec, rgb, 0)),
                         ms_ssim=calculate_ms_ssim(rec, rgb, 0), **extra))

    for target in targets:
        for codec, name in (('libx265', 'x265'), ('libvvenc', 'vvenc')):
            r = fit(rgb, codec, target)
            add(name, target, r.bpp, r.image, qp=r.qp)
        r = fit_budget(rgb, 'libx265', int(target * pixels / 8), 51, {}, partial(vrp_size, size))
        if r is not None:
            add('x265_vrp', target, 8.0 * vrp_size(size, r.bitstream) / pixels, r.image, qp=r.qp)
        best = None
        for s in GRID:
            lr = lr_size(*size, s)
            r = fit_budget(downscale(rgb, lr), 'libx265', int(target * pixels / 8), 51, {},
                           partial(vrp_size, lr))
            if r is None:
                continue
            rec = upscale_bicubic(r.image, size)
            psnr = calculate_psnr(rec, rgb, 0)
            if best is None or psnr > best[0]:
                best = (psnr, s, r, rec, lr)
        if best is not None:
            add('bicubic_vrp', target, 8.0 * vrp_size(best[4], best[2].bitstream) / pixels, best[3], s=best[1],
                qp=best[2].qp)
        lr = lr_size(*size, 4.0)
        r = fit(downscale(rgb, lr), 'libx265', target * pixels / (lr[0] * lr[1]))
        with torch.no_grad():
            rec = tensor2img(esrgan(rgb_to_tensor(r.image)[None]).clamp_(0, 1), rgb2bgr=False)
        add('realesrgan', target, 8.0 * r.num_bytes / pixels, rec, qp=r.qp)
        enc = encode_image(rgb, 'libx265', decoder, bpp=target, scales=GRID, dial=0.0)
        add('assr_eic', target, 8.0 * len(enc.data) / pixels, enc.restored, s=enc.chosen.scale, qp=enc.chosen.qp,
            bitstream_bpp=8.0 * len(EICFile.from_bytes(enc.data).bitstream) / pixels)
    return rows


def summarise(rows: list, targets: list, size: int) -> None:
    """Mean table per target, BD-rates of assr_eic (whole file, and bitstream only) and the bicubic check."""
    from vrpsr_plugin.evaluation.bdrate import bd_rate
    from vrpsr_plugin.evaluation.stats import paired_ttest
    methods = list(dict.fromkeys(r['method'] for r in rows))
    images = list(dict.fromkeys(r['image'] for r in rows))
    print(f'{len(images)} images ({", ".join(images)}), {size}x{size} centre crops')
    print('method      target   bpp     PSNR    MS-SSIM')
    for method in methods:
        for target in targets:
            sel = [r for r in rows if r['method'] == method and r['target'] == target]
            if sel:
                mean = {k: statistics.mean(r[k] for r in sel) for k in ('bpp', 'psnr', 'ms_ssim')}
                print(f'{method:10s}  {target:.3f}  {mean["bpp"]:.4f}  {mean["psnr"]:6.2f}  {mean["ms_ssim"]:.4f}')
    for label, key in (('', 'bpp'), (' (bitstream only, container not counted)', 'bitstream_bpp')):
        for anchor in [m for m in methods if m != 'assr_eic' and (key == 'bpp' or not m.endswith('_vrp'))]:
            for metric in ('psnr', 'ms_ssim'):
                values, notes = [], 0
                for image in images:
                    ours = sorted((r[key], r[metric]) for r in rows
                                  if r['image'] == image and r['method'] == 'assr_eic')
                    base = sorted((r['bpp'], r[metric]) for r in rows if r['image'] == image and r['method'] == anchor)
                    value, note = bd_rate(*zip(*base), *zip(*ours))
                    if np.isfinite(value):
                        values.append(value)
                        notes += bool(note)
                mean = f'{statistics.mean(values):+.1f}%' if values else 'n/a'
                p = paired_ttest(values, [0.0] * len(values))['p']
                print(f'BD-rate assr_eic{label} vs {anchor:11s} on {metric:7s}: {mean} (mean over {len(values)} of '
                      f'{len(images)} images, {notes} with a reliability note; t-test of the per-image BD-rates '
                      f'against 0: p={p:.2g})')
    for anchor in ('x265_vrp', 'bicubic_vrp'):  # same file budget: paired by image at each target
        for metric in ('psnr', 'ms_ssim'):
            cells = []
            for t in targets:
                pairs = [(a[metric], b[metric]) for a in rows for b in rows
                         if a['method'] == 'assr_eic' and b['method'] == anchor and a['target'] == b['target'] == t
                         and a['image'] == b['image']]
                test = paired_ttest(*zip(*pairs)) if pairs else None
                cells.append(f'{t:g}: {test["mean_diff"]:+.4g} (p={test["p"]:.2g})' if test else f'{t:g}: n/a')
            print(f'assr_eic - {anchor} on {metric} per target (paired t-test over images): ' + ', '.join(cells))
    wins = [statistics.mean(r['psnr'] for r in rows if r['method'] == 'assr_eic' and r['target'] == t) >
            statistics.mean(r['psnr'] for r in rows if r['method'] == 'bicubic_vrp' and r['target'] == t)
            for t in targets]
    print(f'assr_eic above bicubic rescaling (mean PSNR) at {sum(wins)}/{len(targets)} targets')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=6)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--targets', default='0.03,0.05,0.08,0.11,0.15')
    parser.add_argument('--decoder', help='decoder .safetensors (default: the shipped one)')
    parser.add_argument('--json', help='write every row here')
    parser.add_argument('--from-json', help='summarise the rows of an earlier --json instead of measuring')
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(',')]
    if args.from_json:
        with open(args.from_json) as handle:
            summarise(json.load(handle), targets, args.size)
        return 0
    import torch
    torch.set_num_threads(1)
    from vrpsr_plugin.eic.pipeline import load_decoder
    decoder, esrgan = load_decoder(args.decoder), realesrgan()
    rows = []
    for name, rgb in photos(args.images, args.size):
        start = time.perf_counter()
        rows += [dict(row, image=name) for row in run_image(rgb, targets, decoder, esrgan)]
        print(f'{name}: {time.perf_counter() - start:.0f} s', file=sys.stderr, flush=True)
    if args.json:
        from vrpsr_plugin.atomic_io import write_json
        write_json(args.json, rows)
    summarise(rows, targets, args.size)
    return 0


if __name__ == '__main__':
    sys.exit(main())
