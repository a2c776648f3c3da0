"""Outputs of ``vrpsr eval``: results.json, per_image.csv, a markdown table laid out like Table 1 (+ Table S2-style
significance, Table S4 for CRF points) and RD-curve PNGs per codec and metric (matplotlib, Agg)."""
import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from vrpsr_plugin.atomic_io import write_bytes

TABLE1 = ('psnr', 'ms_ssim', 'lpips', 'dists', 'fid')  # Table 1's metrics, with MS-SSIM
LABELS = {'psnr': 'PSNR', 'psnr_y': 'PSNR-Y', 'ssim': 'SSIM', 'ms_ssim': 'MS-SSIM', 'lpips': 'LPIPS',
          'dists': 'DISTS', 'fid': 'FID'}
CODEC_LABELS = {'libx264': 'H.264 (x264)', 'libx265': 'H.265 (x265)', 'libvvenc': 'H.266 (vvenc)'}
DIGITS = {'psnr': 2, 'psnr_y': 2, 'ssim': 4, 'ms_ssim': 4, 'lpips': 3, 'dists': 3, 'fid': 2}


def _clean(obj):
    """NaN/inf -> None so results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, results: dict) -> None:
    write_bytes(path, json.dumps(_clean(results), indent=1, allow_nan=False).encode('utf-8'))


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """One line per image x method x codec x point; metric columns, then ``cf_``-prefixed colour-fixed ones."""
    metric_keys = sorted({k for r in rows for k in r['metrics']})
    cf_keys = sorted({k for r in rows for k in r.get('metrics_color_fix', {})})
    fields = ['image', 'method', 'codec', 'mode', 'point', 'source_bpp', 'target_bpp', 'bpp', 'qp', 'clipped',
              'num_encodes'] + metric_keys + [f'cf_{k}' for k in cf_keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r['codec'], r['mode'], r['point'], r['method'], r['image'])):
        line = {k: row[k] for k in fields[:11]}
        line.update(row['metrics'])
        line.update({f'cf_{k}': v for k, v in row.get('metrics_color_fix', {}).items()})
        writer.writerow(line)
    write_bytes(path, buffer.getvalue().encode('utf-8'))


def _fmt(value: Optional[float], metric: str) -> str:
    return 'n/a' if value is None or not math.isfinite(value) else f'{value:.{DIGITS[metric]}f}'


def _value(cell: dict, metric: str, variant: str) -> Optional[float]:
    if metric == 'fid':
        return cell['fid'].get(variant)
    found = cell['metrics'][variant].get(metric)
    return None if found is None else found['mean']


def _bd(curve: dict, name: str, variant: str, metric: str) -> str:
    """The BD-rate cell, with a warning sign when its note says it is unreliable (see bdrate.bd_rate)."""
    found = curve['bd_rate'][name][variant].get(metric)
    if found is None or found['value'] is None:
        return 'n/a' + (' ⚠' if found and found.get('note') else '')
    return f'{found["value"]:+.2f}%' + (' ⚠' if found.get('note') else '')


def markdown(results: dict) -> str:
    """Table 1 layout per mode (QP, CRF) and variant (raw, colour-fixed), then the paired t-tests (Table S2)."""
    proto, curves = results['protocol'], results['curves']
    methods, baseline = proto['methods'], proto['baseline']
    codecs = [c for c in proto['codecs'] if c in curves]
    lines = [f'# Rate-matched recompression results ({len(proto["images"])} images, {proto["size"]} px, '
             f'x{proto["scale"]} SR)', '',
             f'Achieved bpp of the recompressed output (never the target). BD-rate ({proto["bd_method"]}) of each '
             f'method against **{baseline}**: negative = bitrate saving. FID: {proto["fid"]}.', '']
    for variant in results['variants']:
        for mode in ('qp', 'crf'):
            if not any(mode in curves[c] for c in codecs):
                continue
            title = 'CQP source points (Table 1)' if mode == 'qp' else 'CRF source points (Table S4)'
            lines += [f'## {title}{" - with colour fix after the codec" if variant == "color_fix" else ""}', '']
            header = ['Method', mode.upper()]
            for codec in codecs:
                header += [f'{CODEC_LABELS.get(codec, codec)} bpp'] + [LABELS[m] for m in TABLE1]
            lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
            for name in methods:
                n_points = max(len(curves[c][mode]['points']) for c in codecs if mode in curves[c])
                for index in range(n_points):
                    cells = [name if index == 0 else '', '']
                    for codec in codecs:
                        points = curves[codec].get(mode, {}).get('points', [])
                        if index >= len(points):
                            cells += [''] * (1 + len(TABLE1))
                            continue
                        cells[1] = str(points[index]['point'])
                        cell = points[index]['methods'][name]
                        bpp = f'{cell["bpp"]["mean"]:.3f}' + ('*' if cell['clipped'] else '')
                        cells += [bpp] + [_fmt(_value(cell, m, variant), m) for m in TABLE1]
                    lines.append('| ' + ' | '.join(cells) + ' |')
                if name != baseline:
                    cells = [f'BDBR vs {baseline}', '']
                    for codec in codecs:
                        curve = curves[codec].get(mode)
                        cells += ['BDBR'] + ([_bd(curve, name, variant, m) for m in TABLE1] if curve else
                                             [''] * len(TABLE1))
                    lines.append('| ' + ' | '.join(cells) + ' |')
            lines += ['', '`*`: the rate search was clipped at the end of the QP range for some image (target '
                      'unreachable).', '']
            lines += _bd_warnings(curves, codecs, mode, methods, baseline, variant)
    lines += _significance(results) + _simulator(results)
    lines += ['## Metrics', '']
    for name, status in results['metrics'].items():
        lines.append(f'- {LABELS[name]}: ' + ('available' if status['available'] else
                                              f'**unavailable** ({status["reason"]})'))
    return '\n'.join(lines) + '\n'


def _bd_warnings(curves: dict, codecs: Sequence[str], mode: str, methods: Sequence[str], baseline: str,
                 variant: str) -> List[str]:
    """The reason behind every ⚠ of one table: which BD-rate is unreliable and why."""
    lines = []
    for codec in codecs:
        curve = curves[codec].get(mode)
        for name in methods:
            if curve is None or name == baseline:
                continue
            for metric in TABLE1:
                found = curve['bd_rate'][name][variant].get(metric)
                if found and found.get('note'):
                    lines.append(f'- ⚠ {name} vs {baseline}, {CODEC_LABELS.get(codec, codec)}, {LABELS[metric]}: '
                                 f'{found["note"]}')
    return lines + [''] if lines else []


def _significance(results: dict) -> List[str]:
    """mean ± std of the baseline and each method, and the two-sided paired t-test p-value (Table S2)."""
    proto, curves = results['protocol'], results['curves']
    baseline = proto['baseline']
    lines = []
    for name in proto['methods']:
        if name == baseline:
            continue
        lines += [f'## Per-image statistics and paired t-tests: {name} vs {baseline} (Table S2)', '',
                  f'| Codec | Point | bpp | Metric | {baseline} | {name} | p-value |', '|---|---|---|---|---|---|---|']
        for codec, modes in curves.items():
            for mode, curve in modes.items():
                for point in curve['points']:
                    base, test = point['methods'][baseline], point['methods'][name]
                    for metric, ttest in point['ttest'][name]['raw'].items():
                        b, t = base['metrics']['raw'][metric], test['metrics']['raw'][metric]
                        p = ttest['p']
                        lines.append(f'| {codec} | {mode}{point["point"]} | {test["bpp"]["mean"]:.3f} | '
                                     f'{LABELS[metric]} | {_fmt(b["mean"], metric)} ± {_fmt(b["std"], metric)} | '
                                     f'{_fmt(t["mean"], metric)} ± {_fmt(t["std"], metric)} | '
                                     f'{"n/a" if p is None or not math.isfinite(p) else f"{p:.2e}"} |')
        lines.append('')
    return lines


def _simulator(results: dict) -> List[str]:
    """Simulator output vs the real codec's output per codec and QP (Table 3, left half)."""
    if 'simulator' not in results:
        return []
    lines = ['## Codec simulator vs real codec (Table 3, left half)', '']
    for codec, points in results['simulator'].items():
        names = list(points[0]['metrics'])
        lines += [f'| {codec} QP | bpp | ' + ' | '.join(LABELS[m] for m in names) + ' |',
                  '|' + '---|' * (2 + len(names))]
        for point in points:
            lines.append(f'| {point["qp"]} | {point["bpp"]["mean"]:.3f} | '
                         + ' | '.join(_fmt(point['metrics'][m]['mean'], m) for m in names) + ' |')
        lines.append('')
    return lines


def plot_rd(folder: Path, results: dict) -> List[Path]:
    """One PNG per codec, mode and metric: metric against achieved bpp, one curve per method."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    written = []
    for codec, modes in results['curves'].items():
        for mode, curve in modes.items():
            for variant in results['variants']:
                first = curve['points'][0]['methods'][results['protocol']['baseline']]
                metrics = list(first['metrics'][variant]) + (['fid'] if variant in first['fid'] else [])
                for metric in metrics:
                    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
                    for name in results['protocol']['methods']:
                        cells = [p['methods'][name] for p in curve['points']]
                        ax.plot([c['bpp']['mean'] for c in cells], [_value(c, metric, variant) for c in cells],
                                marker='o', label=name)
                    ax.set_xlabel('bpp (achieved)')
                    ax.set_ylabel(LABELS[metric])
                    ax.set_title(f'{CODEC_LABELS.get(codec, codec)}, {mode.upper()}'
                                 + (' (colour fix)' if variant == 'color_fix' else ''))
                    ax.grid(True, alpha=0.3)
                    ax.legend()
                    fig.tight_layout()
                    suffix = '_colorfix' if variant == 'color_fix' else ''
                    path = folder / f'rd_{codec}_{mode}_{metric}{suffix}.png'
                    buffer = io.BytesIO()
                    fig.savefig(buffer, format='png')
                    plt.close(fig)
                    write_bytes(path, buffer.getvalue())
                    written.append(path)
    return written


def write_all(folder: Path, results: dict, rows: Sequence[dict]) -> Dict[str, Path]:
    """results.json, per_image.csv, results.md and the RD PNGs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / 'results.json', results)
    write_csv(folder / 'per_image.csv', rows)
    write_bytes(folder / 'results.md', markdown(results).encode('utf-8'))
    plot_rd(folder, results)
    return {'json': folder / 'results.json', 'csv': folder / 'per_image.csv', 'markdown': folder / 'results.md'}
