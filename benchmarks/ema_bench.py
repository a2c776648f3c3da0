"""EMA memory and time (issue 12.3): BasicSR's EMA (a second full network, every weight averaged) vs ours
(``CodecLoopModel.setup_ema``: net_g_ema shares the frozen base, only the trained LoRA/FiLM weights are copied and
averaged), on the diffusion codec simulator in a CodecSimulatorModel training loop.

Each variant runs in its own process: memory held after the model is built (CUDA: allocated; CPU: RSS growth from
before the build), peak during ``--steps`` training steps (CUDA: max allocated; CPU: peak RSS from before the
build), the median ms of one EMA update, and the exact MiB of parameters net_g_ema owns (not shared with
net_g). Medians over ``--runs`` processes; ratios ours / BasicSR.

    python benchmarks/ema_bench.py                       # CPU, tiny random SD-Turbo-layout model
    python benchmarks/ema_bench.py --config full         # SD-Turbo shapes (random weights), CUDA when available
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import _peak_rss, _reset_peak_rss, run_in_child  # noqa: E402


def _variant(variant: str, sd_path: str, size: int, steps: int, autocast: str, queue: Any) -> None:
    import vrpsr_plugin  # noqa: F401
    from basicsr.archs import build_network
    from basicsr.models import build_model
    from basicsr.models.sr_model import SRModel
    from vrpsr_plugin.codecs.condition import CodecCondition
    from vrpsr_plugin.models.codec_simulator_model import CodecLoopModel
    if variant == 'basicsr':  # the reference: BasicSR's SRModel EMA (full second network, all weights averaged)
        def setup_ema(self):
            self.ema_decay = self.opt['train']['ema_decay']
            self.net_g_ema = build_network(self.opt['network_g']).to(self.device).eval()
            SRModel.model_ema(self, 0)
        CodecLoopModel.setup_ema = setup_ema
        CodecLoopModel.model_ema = SRModel.model_ema
    cuda = torch.cuda.is_available()
    opt = {'model_type': 'CodecSimulatorModel', 'num_gpu': int(cuda), 'is_train': True, 'dist': False, 'rank': 0,
           'world_size': 1, 'scale': 1, 'path': {'pretrain_network_g': None},
           'network_g': {'type': 'DiffusionCodecSimulator', 'pretrained_model_name_or_path': sd_path,
                         'autocast_dtype': autocast, 'gradient_checkpointing': True},
           'train': {'ema_decay': 0.999, 'optim_g': {'type': 'AdamW', 'lr': 1e-5},
                     'scheduler': {'type': 'constant', 'total_steps': 10 ** 6},
                     'perceptual_opt': {'type': 'VRPSRPerceptualLoss', 'gan_weight': 0, 'mse_only': True}},
           'logger': {}}
    base = _reset_peak_rss()
    model = build_model(opt)
    if cuda:
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() / 2 ** 20
        torch.cuda.reset_peak_memory_stats()
    else:
        held = (_peak_rss() - base) / 1024
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=gen)
    cond = CodecCondition.collate([CodecCondition('libx265', 0.3)])
    for step in range(1, steps + 1):
        model.feed_data({'gt': x, 'cond': cond, 'codec_out': x.flip(-1)})
        model.optimize_parameters(step)
    ema_ms = []
    for _ in range(5):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.model_ema(0.999)
        if cuda:
            torch.cuda.synchronize()
        ema_ms.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else (_peak_rss() - base) / 1024
    shared = {t.data_ptr() for t in model.net_g.parameters()}
    owned = sum(t.numel() * t.element_size() for t in model.net_g_ema.parameters() if t.data_ptr() not in shared)
    queue.put((held, peak, statistics.median(ema_ms), owned / 2 ** 20, 'cuda' if cuda else 'cpu'))


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='tiny', choices=['tiny', 'full'])
    parser.add_argument('--size', type=int, default=None, help='training crop (default 32 tiny, 512 full)')
    parser.add_argument('--steps', type=int, default=2)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--autocast', default=None, help='bf16 / fp16 (default fp32)')
    args = parser.parse_args(argv)
    size = args.size or (32 if args.config == 'tiny' else 512)
    import vrpsr_plugin  # noqa: F401
    import basicsr  # noqa: F401  (registers the plugin; compat makes torchvision importable first)
    from vrpsr_plugin.archs.tiny_sd import build_sd_folder
    with tempfile.TemporaryDirectory() as tmp:
        sd_path = build_sd_folder(str(Path(tmp) / 'sd'), args.config)
        rows: Dict[str, List[tuple]] = {'basicsr': [], 'ours': []}
        for _ in range(args.runs):  # interleaved runs
            for variant in rows:
                rows[variant].append(run_in_child(_variant, variant, sd_path, size, args.steps, args.autocast))
    device = rows['ours'][0][4]
    unit = 'CUDA MiB' if device == 'cuda' else 'RSS MiB'
    print(f'EMA on DiffusionCodecSimulator ({args.config}), {size}x{size}, batch 1, {args.steps} steps, device '
          f'{device}, medians of {args.runs} processes')
    print(f'{"variant":<10}{"held " + unit:>18}{"peak " + unit:>18}{"EMA step ms":>14}{"EMA-owned MiB":>16}')
    med = {v: [statistics.median(r[i] for r in runs) for i in range(4)] for v, runs in rows.items()}
    for variant, (held, peak, ms, owned) in med.items():
        print(f'{variant:<10}{held:>18.1f}{peak:>18.1f}{ms:>14.2f}{owned:>16.2f}')
    (bh, bp, bm, bo), (oh, op, om, oo) = med['basicsr'], med['ours']
    print(f'ratio ours / basicsr: held {oh / bh:.2f}x, peak {op / bp:.2f}x, EMA step {om / bm:.3f}x, '
          f'EMA-owned {oo / bo:.3f}x')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
