"""The ffmpeg subprocess route: every codec (the only route for vvenc, JPEG, AV1, WebP) (§3.1).

Raw planes go to ffmpeg's stdin and the bitstream comes back on stdout (and the reverse for decoding), so no
temporary files exist. Each ffmpeg runs in its own process group, which is killed on timeout, error or
KeyboardInterrupt before the call returns. The binary is the ``ffmpeg`` argument, else ``$VRPSR_FFMPEG``, else
the static build shipped by imageio-ffmpeg.
"""
import functools
import os
import signal
import subprocess
from typing import List, Optional, Tuple

from vrpsr_plugin.codecs.encoders import CodecSpec, Options
from vrpsr_plugin.codecs.errors import (CodecError, CodecTimeoutError, EncoderUnavailableError,
                                        FFmpegNotFoundError)

DEFAULT_TIMEOUT = 120.0
_QUIET_ENV = {'SVT_LOG': '1', 'AV_LOG_FORCE_NOCOLOR': '1'}  # SVT-AV1 logs errors only


def resolve_ffmpeg(ffmpeg: Optional[str] = None) -> str:
    """Path of the ffmpeg binary to run; FFmpegNotFoundError when it is not an executable file."""
    path = ffmpeg or os.environ.get('VRPSR_FFMPEG')
    source = 'argument' if ffmpeg else 'VRPSR_FFMPEG' if path else 'imageio-ffmpeg'
    if not path:
        try:
            import imageio_ffmpeg
            path = imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError) as exc:
            raise FFmpegNotFoundError(f'no ffmpeg: pass ffmpeg=..., set VRPSR_FFMPEG, or install imageio-ffmpeg '
                                      f'({exc})') from exc
    path = os.fspath(path)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise FFmpegNotFoundError(f'ffmpeg not found (or not executable) at {path!r} (from {source})')
    return path


def _kill(proc: subprocess.Popen) -> None:
    """Kill ``proc``'s whole process group and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_ffmpeg(ffmpeg: str, args: List[str], data: bytes = b'', timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """Run ``ffmpeg args`` with ``data`` on stdin; return stdout. Raises CodecTimeoutError / CodecError (with the
    tail of stderr); never leaves the process (group) behind."""
    cmd = [ffmpeg, '-hide_banner', '-nostdin', '-loglevel', 'error', *args]
    env = {**os.environ, **_QUIET_ENV}
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, env=env)
    except OSError as exc:
        raise FFmpegNotFoundError(f'cannot run ffmpeg at {ffmpeg!r}: {exc}') from exc
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise CodecTimeoutError(f'ffmpeg ({ffmpeg}) did not finish within {timeout:g} s; killed it. '
                                f'Command: {" ".join(cmd)}') from None
    finally:
        _kill(proc)
    if proc.returncode != 0:
        tail = err.decode('utf-8', 'replace').strip()[-1500:]
        raise CodecError(f'ffmpeg ({ffmpeg}) exited with status {proc.returncode}. Command: {" ".join(cmd)}\n'
                         f'stderr: {tail}')
    return out


@functools.lru_cache(maxsize=8)
def ffmpeg_encoders(ffmpeg: str) -> Tuple[str, ...]:
    """Video encoder names compiled into ``ffmpeg`` (parsed from ``ffmpeg -encoders``), cached per binary."""
    text = run_ffmpeg(ffmpeg, ['-encoders'], timeout=30).decode('utf-8', 'replace')
    names = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] == 'V':
            names.append(parts[1])
    return tuple(names)


def require_encoder(ffmpeg: str, spec: CodecSpec) -> None:
    """EncoderUnavailableError when ``spec.encoder`` is missing from ``ffmpeg``."""
    if spec.encoder not in ffmpeg_encoders(ffmpeg):
        raise EncoderUnavailableError(f'encoder {spec.encoder!r} (codec {spec.name!r}) is not in the ffmpeg '
                                      f'build at {ffmpeg}')


def option_args(options: Options) -> List[str]:
    args: List[str] = []
    for key, value in options:
        args += [f'-{key}', value]
    return args


def colour_filter(spec: CodecSpec) -> str:
    """``setparams`` filter tagging the frames with ``spec``'s colour description: ffmpeg >= 7 writes the
    encoder's colour fields from the frames, so the ``-color_primaries``/``-color_trc`` output options alone are
    not enough."""
    names = {'color_range': 'range'}
    return 'setparams=' + ':'.join(f'{names.get(key, key)}={value}' for key, (value, _) in spec.colour().items())


def encode_ffmpeg(raw: bytes, width: int, height: int, spec: CodecSpec, options: Options, ffmpeg: str,
                  timeout: float) -> bytes:
    """Planar yuv420 ``raw`` -> the codec's elementary bitstream (one intra picture)."""
    from vrpsr_plugin.distributed import codec_threads
    require_encoder(ffmpeg, spec)
    threads = codec_threads()
    args = ['-f', 'rawvideo', '-pix_fmt', spec.pix_fmt, '-s', f'{width}x{height}', '-r', '25', '-i', 'pipe:0',
            '-frames:v', '1', '-vf', colour_filter(spec), '-c:v', spec.encoder, *option_args(options),
            *(['-threads', str(threads)] if threads else []), '-pix_fmt', spec.pix_fmt,
            '-f', spec.muxer, 'pipe:1']
    out = run_ffmpeg(ffmpeg, args, raw, timeout)
    if not out:
        raise CodecError(f'{spec.encoder} (ffmpeg {ffmpeg}) produced an empty bitstream for {width}x{height}')
    return out


def decode_ffmpeg(bitstream: bytes, spec: CodecSpec, ffmpeg: str, timeout: float) -> bytes:
    """Elementary bitstream -> planar yuv420 raw bytes of its first picture (the decoder's own pixel format)."""
    args = ['-f', spec.demuxer, '-i', 'pipe:0', '-frames:v', '1', '-f', 'rawvideo', '-pix_fmt', spec.pix_fmt,
            'pipe:1']
    return run_ffmpeg(ffmpeg, args, bitstream, timeout)
