"""One ``vrpsr eval`` run end to end: protocol (cached), summary, reports (§4.1, Tables 1, S2, S4, 3-left).

With an :class:`~vrpsr_plugin.engine.Engine` the protocol's cache is filled by shards run on a process pool or a Ray
cluster first: the source encodes (image x codec x point), then the items (method x image x codec x point), each
worker rebuilding the protocol from the run's config once. The summary then reads every row back from the cache in
the protocol's own order, so the tables are the same numbers whatever engine computed them.
"""
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from vrpsr_plugin.engine import Engine
from vrpsr_plugin.evaluation import report
from vrpsr_plugin.evaluation.metric_suite import MetricSuite
from vrpsr_plugin.evaluation.protocol import EvalConfig, Point, Protocol
from vrpsr_plugin.evaluation.simulator_eval import evaluate_simulator
from vrpsr_plugin.evaluation.summary import metric_status, summarize

_WORKER: Dict[str, Any] = {}  # per worker process: the protocol of the run it serves


def _worker_protocol(cfg: EvalConfig, suite_kwargs: Dict[str, Any], threads: int) -> Protocol:
    """The protocol of this run in a worker process, built once per process (models and metric nets loaded)."""
    spec = (cfg, suite_kwargs, threads)
    if _WORKER.get('spec') != spec:
        torch.set_num_threads(threads)
        _WORKER.update(spec=spec, protocol=Protocol.from_config(cfg, MetricSuite.load(**suite_kwargs)))
    return _WORKER['protocol']


def _source_task(cfg: EvalConfig, suite_kwargs: Dict[str, Any], threads: int, path: Path, codec: str,
                 point: Point) -> None:
    _worker_protocol(cfg, suite_kwargs, threads).source(path, codec, point)


def _item_task(cfg: EvalConfig, suite_kwargs: Dict[str, Any], threads: int, name: str, path: Path, codec: str,
               point: Point) -> None:
    _worker_protocol(cfg, suite_kwargs, threads).item(name, path, codec, point)


def run_shards(protocol: Protocol, engine: Engine, suite_kwargs: Dict[str, Any], threads: int = 1,
               progress: bool = True) -> None:
    """Fill ``protocol``'s cache on ``engine``; workers build their suite with ``MetricSuite.load(**suite_kwargs)``
    and use ``threads`` torch threads. Cached shards are skipped, so a killed run resumes."""
    from vrpsr_plugin.atomic_io import remove_temp_files
    cfg, common = protocol.cfg, (protocol.cfg, suite_kwargs, threads)
    remove_temp_files(protocol.root)  # left by a run killed mid-write
    sources = [common + (path, codec, point) for codec in cfg.codecs for point in cfg.points()
               for path in protocol.images]
    engine.map(_source_task, sources, 'vrpsr eval sources', 'enc', progress=progress)
    items = [common + (name, path, codec, point) for codec in cfg.codecs for point in cfg.points()
             for name in protocol.models for path in protocol.images]
    engine.map(_item_task, items, 'vrpsr eval', 'item', progress=progress)
    remove_temp_files(protocol.root)  # a worker killed mid-write, its task then retried


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
    rows = protocol.run(progress=progress)  # after run_shards: every row read back from the cache
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

