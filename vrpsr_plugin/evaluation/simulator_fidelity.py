"""Does a codec simulator behave like the real codec where stage 2 needs it to? (checks beyond Table 3)

For held-out photos X and each codec:
- ``psnr``: PSNR(f(X, c), real codec output) at each QP, c = (codec, the real bpp), beside PSNR(X, real) (what an
  identity simulator would score); ``drawn``: PSNR(X, f(X, c)) with the simulator as stage 2 trains through it
  (autograd on: the DCT proxy draws its quantisation noise, where without autograd it returns its conditional
  mean, the best predictor of the decode but closer to X than the decode is), beside PSNR(X, real);
- ``rate``: for a rate-aware simulator, mean |R(X, q) / real bits - 1| of its rate model;
- ``sweep``: PSNR(X, f(X, c)) as the condition's bpp falls from 3 to 0.03: it must not rise (0.05 dB tolerance;
  below the rate of the codec's coarsest QP the real codec, and so a rate-aware simulator, stays flat);
- ``noise``: the price of costly content at a fixed budget. X + n (Gaussian, sigma 8/255) is coded at the bpp X
  gets at QP 27 and at QP 37 (rate-matched, Eq. 2); the real codec loses PSNR(X, codec(X)) - PSNR(X, codec(X + n))
  dB, the simulator the same difference with f. ``ratio`` = simulator loss / real loss (1 = the real price), for
  the no-grad output and (``drawn``) for the one stage 2 trains through, with the same noise draw for X and X + n.

    python -m vrpsr_plugin.evaluation.simulator_fidelity SIMULATOR.pth DATA_DIR [--size 256] [--codecs ...]
"""
import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

SWEEP_BPPS = (3.0, 1.0, 0.3, 0.1, 0.03)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from basicsr.metrics import calculate_psnr
    return float(calculate_psnr(a, b, crop_border=0))


def _simulate(simulator: torch.nn.Module, image: np.ndarray, codec: str, bpp: float,
              draw: Optional[int] = None) -> np.ndarray:
    """f(image, c) without autograd, or with ``draw`` (a seed) as stage 2 trains through it (autograd on)."""
    from basicsr.utils import tensor2img

    from vrpsr_plugin.codecs import CodecCondition
    from vrpsr_plugin.codecs.inputs import rgb_to_tensor
    cond = CodecCondition.from_stream(codec, float(bpp), image.shape[0] * image.shape[1]).vector()[None]
    if draw is None:
        with torch.no_grad():
            out = simulator(rgb_to_tensor(image)[None], cond)
    else:
        with torch.random.fork_rng(), torch.enable_grad():
            torch.manual_seed(draw)
            out = simulator(rgb_to_tensor(image)[None], cond).detach()
    return tensor2img(out[0], rgb2bgr=False)


def fidelity(simulator: torch.nn.Module, images: Sequence[np.ndarray], codecs: Sequence[str] = ('libx264', 'libx265'),
             qps: Sequence[int] = (17, 27, 32, 37, 42), noise_sigma: float = 8.0, noise_qps: Sequence[int] = (27, 37),
             seed: int = 0) -> Dict[str, dict]:
    """The four checks of the module docstring, per codec (means over ``images``)."""
    import warnings

    from vrpsr_plugin.codecs import encode, find_qp
    from vrpsr_plugin.codecs.inputs import rgb_to_tensor
    rng = np.random.default_rng(seed)
    noisy = [np.clip(im + rng.normal(0, noise_sigma, im.shape), 0, 255).round().astype(np.uint8) for im in images]
    simulator = simulator.eval()
    rate_model = getattr(simulator, 'rate_model', None)
    out: Dict[str, dict] = {}
    for codec in codecs:
        rows: Dict[int, List[tuple]] = {q: [] for q in qps}
        rate_errors, sweeps, noise = [], [], {q: [] for q in noise_qps}
        for i, (image, noisy_image) in enumerate(zip(images, noisy)):
            draw = seed * 1000 + i
            coded = {qp: encode(image, codec, qp=qp) for qp in sorted({*qps, *noise_qps})}  # each QP coded once
            simulated = {qp: _simulate(simulator, image, codec, real.bpp) for qp, real in coded.items()}
            drawn = {qp: _simulate(simulator, image, codec, real.bpp, draw) for qp, real in coded.items()}
            for qp in qps:
                real = coded[qp]
                rows[qp].append((_psnr(simulated[qp], real.image), _psnr(image, real.image),
                                 _psnr(image, drawn[qp])))
                if rate_model is not None:
                    onehot = torch.tensor([[1.0 if c == codec else 0.0 for c in rate_model.codecs]])
                    with torch.no_grad():
                        predicted = float(rate_model(rgb_to_tensor(image)[None], onehot, torch.tensor([float(qp)])))
                    rate_errors.append(abs(predicted / real.bpp - 1))
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', RuntimeWarning)  # sweep ends may lie outside the fitted range
                sweeps.append([_psnr(image, _simulate(simulator, image, codec, b)) for b in SWEEP_BPPS])
            for qp in noise_qps:
                budget = coded[qp]
                real_noisy = find_qp(noisy_image, codec, budget.bpp)
                real_loss = _psnr(image, budget.image) - _psnr(image, real_noisy.image)
                sim_loss = _psnr(image, simulated[qp]) - _psnr(image, _simulate(simulator, noisy_image, codec,
                                                                                budget.bpp))
                drawn_loss = _psnr(image, drawn[qp]) - _psnr(image, _simulate(simulator, noisy_image, codec,
                                                                              budget.bpp, draw))
                noise[qp].append((real_loss, sim_loss, drawn_loss))
        sweep = np.mean(sweeps, axis=0)
        losses = {q: np.mean(v, axis=0) for q, v in noise.items()}
        out[codec] = {
            'psnr': {q: {'sim_vs_real': float(np.mean([r[0] for r in rows[q]])),
                         'identity_vs_real': float(np.mean([r[1] for r in rows[q]]))} for q in qps},
            'drawn': {q: float(np.mean([r[2] for r in rows[q]])) for q in qps},  # PSNR(X, drawn f(X, c))
            'rate': float(np.mean(rate_errors)) if rate_errors else None,
            'sweep': {'bpp': list(SWEEP_BPPS), 'psnr_vs_x': [float(v) for v in sweep],
                      'monotone': bool(np.all(np.diff(sweep) < 0.05))},
            'noise': {q: {'sigma': noise_sigma, 'real_db': float(r), 'sim_db': float(f),
                          'ratio': float(f / r) if r > 0 else None, 'drawn_db': float(d),
                          'drawn_ratio': float(d / r) if r > 0 else None} for q, (r, f, d) in losses.items()},
        }
    return out


def format_fidelity(report: Dict[str, dict]) -> str:
    """A few printable lines per codec."""
    lines = []
    for codec, r in report.items():
        psnr = ', '.join(f'QP{q} {v["sim_vs_real"]:.2f} (identity {v["identity_vs_real"]:.2f})'
                         for q, v in r['psnr'].items())
        lines.append(f'{codec}: PSNR(simulator, real codec) dB: {psnr}')
        drawn = ', '.join(f'QP{q} {v:.2f} (real codec {r["psnr"][q]["identity_vs_real"]:.2f})'
                          for q, v in r['drawn'].items())
        lines.append(f'{codec}: PSNR(X, simulator as stage 2 trains through it) dB: {drawn}')
        if r['rate'] is not None:
            lines.append(f'{codec}: rate model mean |R/real - 1| = {r["rate"]:.3f}')
        sweep = ', '.join(f'{b:g}: {p:.2f}' for b, p in zip(r['sweep']['bpp'], r['sweep']['psnr_vs_x']))
        lines.append(f'{codec}: PSNR(X, simulator) by condition bpp: {sweep} (monotone: {r["sweep"]["monotone"]})')
        for qp, n in r['noise'].items():
            ratio, drawn_ratio = ('n/a' if v is None else f'{v:.2f}' for v in (n['ratio'], n['drawn_ratio']))
            lines.append(f'{codec}: noise (sigma {n["sigma"]:g}) at the bpp of QP {qp} costs the real codec '
                         f'{n["real_db"]:.2f} dB, the simulator {n["sim_db"]:.2f} dB (ratio {ratio}), as stage 2 '
                         f'trains through it {n["drawn_db"]:.2f} dB (ratio {drawn_ratio})')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('simulator', help='simulator checkpoint (.pth with its arch, or a BasicSR option file)')
    parser.add_argument('data', type=Path, help='folder of held-out photos')
    parser.add_argument('--size', type=int, default=256, help='center crop of each photo')
    parser.add_argument('--codecs', nargs='+', default=['libx264', 'libx265'])
    parser.add_argument('--qps', nargs='+', type=int, default=[17, 27, 32, 37, 42])
    parser.add_argument('--limit', type=int, default=None, help='use the first N photos')
    args = parser.parse_args(argv)
    from vrpsr_plugin.evaluation.cache import read_image
    from vrpsr_plugin.evaluation.degrade import prepare_hr
    from vrpsr_plugin.evaluation.protocol import list_images
    from vrpsr_plugin.inference import load_model
    images = [prepare_hr(read_image(p), args.size) for p in list_images(args.data)[:args.limit]]
    print(format_fidelity(fidelity(load_model(args.simulator), images, args.codecs, args.qps)))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
