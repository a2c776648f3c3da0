"""One ``vrpsr eval`` run end to end: protocol (cached), summary, reports (§4.1, Tables 1, S2, S4, 3-left)."""
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vrpsr_plugin.evaluation import report
from vrpsr_plugin.evaluation.protocol import Point, Protocol
from vrpsr_plugin.evaluation.simulator_eval import evaluate_simulator
from vrpsr_plugin.evaluation.summary import metric_status, summarize


def fid_description(protocol: Protocol) -> str:
    suite = protocol.suite
    if not suite.wants_fid():
        return 'not computed' + (f' ({suite.unavailable["fid"]})' if 'fid' in suite.unavailable else '')
    if suite.fid_mode == 'patch':
        return (f'patch-FID on {suite.fid_patch}x{suite.fid_patch} crops (grid + half-shifted grid) of the '
                f'recompressed outputs vs the clean images')
    return 'FID on whole images (Inception resizes to 299x299) of the recompressed outputs vs the clean images'


def evaluate(protocol: Protocol, simulator: Optional[torch.nn.Module] = None, progress: bool = True) -> dict:
    """Run (or resume) every item, aggregate, and write results.json, per_image.csv, results.md and RD PNGs."""
    cfg = protocol.cfg
    rows = protocol.run(progress=progress)
    methods = list(protocol.models)
    features = reference = None
    if protocol.suite.wants_fid():
        reference = np.concatenate([protocol.hr_features(p) for p in protocol.images])
        features = lambda name, codec, mode, point, cf: [  # noqa: E731
            protocol.item_features(name, p, codec, Point(mode, point), cf) for p in protocol.images]
    curves = summarize(rows, methods, cfg.baseline_name(), protocol.suite, cfg.color_fix, features, reference,
                       cfg.bd_method)
    results = {
        'protocol': {'images': [p.stem for p in protocol.images], 'size': cfg.size, 'scale': protocol.scale,
                     'methods': methods, 'models': dict(cfg.models), 'baseline': cfg.baseline_name(),
                     'codecs': list(cfg.codecs), 'qps': list(cfg.qps), 'crfs': list(cfg.crfs),
                     'bd_method': cfg.bd_method, 'fid': fid_description(protocol), 'color_fix': cfg.color_fix,
                     'degradation': asdict(cfg.degradation),
                     'rate_matching': 'target bpp of X\' = 8 * bytes(codec(X~)) / pixels(X\'); achieved bpp reported'},
        'metrics': metric_status(protocol.suite),
        'variants': ['raw', 'color_fix'] if cfg.color_fix else ['raw'],
        'curves': curves,
    }
    if simulator is not None:
        results['simulator'] = evaluate_simulator(protocol, simulator, cfg.codecs, cfg.qps)
    report.write_all(Path(cfg.out), results, rows)
    return results

