"""Codec-simulator accuracy (Table 3, left half): simulator output X^' = f(X, c) against the real codec's X^.

For every clean image X, codec and QP q: the real codec gives X^ and its rate R (bpp); the simulator, conditioned on
c = (codec, R), gives X^'. Reported per codec and QP: mean bpp, PSNR and LPIPS (and DISTS when available) of X^'
against X^. Per-item results are cached like the main protocol's.
"""
from typing import Callable, Dict, Sequence

import torch
from basicsr.utils import tensor2img

from vrpsr_plugin import codecs as codec_api
from vrpsr_plugin.codecs import CodecCondition
from vrpsr_plugin.codecs.inputs import rgb_to_tensor
from vrpsr_plugin.evaluation import cache
from vrpsr_plugin.evaluation.metric_suite import MetricSuite
from vrpsr_plugin.evaluation.protocol import Protocol, default_restore, module_device
from vrpsr_plugin.evaluation.stats import mean_std

SIMULATOR_METRICS = ('psnr', 'lpips', 'dists')


def simulator_item(protocol: Protocol, simulator: torch.nn.Module, path, codec: str, qp: int,
                   restore: Callable = default_restore) -> dict:
    """One image, codec and QP (cached under ``cache/simulator``)."""
    file = protocol.root / 'simulator' / codec / f'qp{qp}' / f'{path.stem}.json'
    found = cache.read_json(file)
    if found is not None:
        return found
    hr = protocol.hr(path)
    real = codec_api.encode(hr, codec, qp=qp)
    cond = CodecCondition.from_stream(codec, float(real.bpp), hr.shape[0] * hr.shape[1]).vector()[None]
    device = module_device(simulator)
    with torch.no_grad():
        out = restore(simulator, rgb_to_tensor(hr)[None].to(device), cond.to(device), tile=protocol.cfg.tile).cpu()
    simulated = tensor2img(out[0], rgb2bgr=False)
    suite: MetricSuite = protocol.suite
    metrics = {k: v for k, v in suite.compute(simulated, real.image).items() if k in SIMULATOR_METRICS}
    row = {'image': path.stem, 'codec': codec, 'qp': qp, 'bpp': float(real.bpp), 'metrics': metrics}
    cache.write_json(file, row)
    return row


def evaluate_simulator(protocol: Protocol, simulator: torch.nn.Module, codecs: Sequence[str], qps: Sequence[int],
                       restore: Callable = default_restore) -> Dict[str, list]:
    """``{codec: [{'qp', 'bpp', 'metrics': {name: {mean, std}}}]}`` over the protocol's images."""
    out: Dict[str, list] = {}
    for codec in codecs:
        for qp in qps:
            rows = [simulator_item(protocol, simulator, path, codec, int(qp), restore) for path in protocol.images]
            names = rows[0]['metrics'].keys()
            out.setdefault(codec, []).append({'qp': int(qp), 'bpp': mean_std([r['bpp'] for r in rows]),
                                              'metrics': {m: mean_std([r['metrics'][m] for r in rows])
                                                          for m in names}})
    return out
