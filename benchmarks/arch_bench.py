"""Cost of the codec condition (App. B.3): forward time and peak memory of each codec-aware arch against its plain
counterpart, measured in the same run (interleaved), at 256x256 and 512x512 inputs.

    python benchmarks/arch_bench.py [--sizes 256 512] [--runs 5] [--device cpu|cuda]

Plain counterparts: basicsr's RRDBNet / SRVGGNetCompact with the same weights, and CodecPostProcessNet with
cond=None (no FiLM). Time: median of ``--runs`` forwards after one warm-up. Memory: on CUDA
``torch.cuda.max_memory_allocated`` minus the weights; on CPU the peak process RSS above the pre-forward level,
sampled every 0.5 ms by a thread (glibc's mmap threshold is pinned, so freed feature maps leave RSS at once).
The configs fit a shared 2-core CPU (a full 23-block RRDB at 512x512 takes minutes per forward there): SRVGG is
realesr-animevideov3's own config; RRDB keeps Real-ESRGAN's topology with fewer blocks and channels, which makes
the condition's relative cost an upper bound (heads and bias adds are O(C), convolutions O(C^2)).
"""
import argparse
import os
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List, Tuple

if os.environ.get('MALLOC_MMAP_THRESHOLD_') is None:  # fixed threshold: large frees return to the OS at once
    os.environ['MALLOC_MMAP_THRESHOLD_'] = '65536'
    os.execv(sys.executable, [sys.executable] + sys.argv)

import psutil  # noqa: E402
import torch  # noqa: E402

import vrpsr_plugin  # noqa: E402,F401
from basicsr.archs.rrdbnet_arch import RRDBNet  # noqa: E402
from basicsr.archs.srvgg_arch import SRVGGNetCompact  # noqa: E402
from vrpsr_plugin.archs.codec_aware_rrdbnet_arch import CodecAwareRRDBNet  # noqa: E402
from vrpsr_plugin.archs.codec_aware_srvgg_arch import CodecAwareSRVGGNetCompact  # noqa: E402
from vrpsr_plugin.archs.post_process_arch import CodecPostProcessNet  # noqa: E402
from vrpsr_plugin.codecs.condition import CodecCondition  # noqa: E402

RRDB = dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=32, num_block=4, num_grow_ch=16)
SRVGG = dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, act_type='prelu')  # animevideov3
POST = dict(num_feat=32, num_block=6, unshuffle=2)


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero head outputs, as after training (zero heads would cost the same, but be safe)."""
    with torch.no_grad():
        for head in model.cond_heads.heads:
            head[2].weight.normal_(std=0.01)
    return model.eval()


def pairs() -> List[Tuple[str, str, torch.nn.Module, torch.nn.Module]]:
    """(name, config, codec-aware net, plain counterpart with the same base weights)."""
    torch.manual_seed(0)
    out = []
    for name, aware, plain, cfg in (('RRDBNet', CodecAwareRRDBNet(**RRDB), RRDBNet(**RRDB), RRDB),
                                    ('SRVGGNetCompact', CodecAwareSRVGGNetCompact(**SRVGG), SRVGGNetCompact(**SRVGG),
                                     SRVGG)):
        plain.load_state_dict({k: v for k, v in aware.state_dict().items() if not k.startswith('cond_heads.')})
        out.append((name, str(cfg), trained_like(aware), plain.eval()))
    post = trained_like(CodecPostProcessNet(**POST))
    out.append(('CodecPostProcessNet', str(POST), post, post))
    return out


def peak_rss_delta(fn: Callable[[], None]) -> int:
    """Peak RSS above the level before ``fn`` ran, sampled by a background thread."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], proc.memory_info().rss) - base


def measure(model: torch.nn.Module, x: torch.Tensor, cond, device: torch.device) -> Tuple[Callable[[], float],
                                                                                          Callable[[], int]]:
    """(one timed forward in ms, one memory measurement in bytes)."""
    def forward() -> None:
        with torch.inference_mode():
            model(x, cond) if cond is not None else model(x)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    def timed() -> float:
        start = time.perf_counter()
        forward()
        return (time.perf_counter() - start) * 1000

    def memory() -> int:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            forward()
            return torch.cuda.max_memory_allocated(device) - base
        return peak_rss_delta(forward)
    return timed, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 512])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    device = torch.device(args.device)
    cond = CodecCondition.collate([CodecCondition('libx265', 0.2)]).to(device)
    print(f'device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'median of {args.runs} interleaved runs after 1 warm-up')
    print(f'{"arch":<20} {"size":>5} {"plain ms":>9} {"aware ms":>9} {"time x":>7} {"plain MiB":>10} '
          f'{"aware MiB":>10} {"mem x":>6}')
    configs: Dict[str, str] = {}
    for name, config, aware, plain in pairs():
        configs[name] = config
        aware, plain = aware.to(device), plain.to(device)
        for size in args.sizes:
            x = torch.rand(1, 3, size, size, device=device)
            plain_time, plain_mem = measure(plain, x, None, device)
            aware_time, aware_mem = measure(aware, x, cond, device)
            plain_time(), aware_time()  # warm-up
            times = {'plain': [], 'aware': []}
            for run in range(args.runs):  # interleave, alternating who goes first, so load drift hits both
                order = [('plain', plain_time), ('aware', aware_time)]
                for key, fn in (order if run % 2 == 0 else order[::-1]):
                    times[key].append(fn())
            mems = [statistics.median(fn() for _ in range(3)) for fn in (plain_mem, aware_mem)]
            t_plain, t_aware = statistics.median(times['plain']), statistics.median(times['aware'])
            print(f'{name:<20} {size:>5} {t_plain:>9.1f} {t_aware:>9.1f} {t_aware / t_plain:>7.3f} '
                  f'{mems[0] / 2**20:>10.1f} {mems[1] / 2**20:>10.1f} {mems[1] / max(mems[0], 1):>6.3f}',
                  flush=True)
    print('configs (plain = same options without the condition; CodecPostProcessNet plain = cond=None):')
    for name, config in configs.items():
        print(f'  {name}: {config}')


if __name__ == '__main__':
    main()
