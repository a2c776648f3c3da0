"""Video coding (codecs.video, ``vrpsr compress-video``): 24 real frames as one inter-coded x264/x265 stream at a
target bitrate, checked against what a stock decoder (imageio-ffmpeg's ffmpeg) reads from the written file;
bad inputs give clear errors and leave no file behind."""
import re
import subprocess
import warnings

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from skimage import data as skdata

from vrpsr_plugin import cli
from vrpsr_plugin.codecs.errors import FFmpegNotFoundError
from vrpsr_plugin.codecs.ffmpeg_route import resolve_ffmpeg, run_ffmpeg
from vrpsr_plugin.codecs.video import encode_video, kbps_to_bpp, write_video

HEIGHT, WIDTH = 96, 128


def real_frames(count: int = 24) -> list:
    """A camera pan over a real photo (skimage's astronaut): crops shifted by (3, 2) px per frame."""
    photo = skdata.astronaut()
    return [np.ascontiguousarray(photo[60 + 3 * i:60 + 3 * i + HEIGHT, 120 + 2 * i:120 + 2 * i + WIDTH])
            for i in range(count)]


def stock_decode(path) -> np.ndarray:
    """Frames as imageio-ffmpeg's reader (its ffmpeg binary, rgb24) reads the file."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta['size']
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


def files_in(folder) -> list:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize('codec', ['libx264', 'libx265'])
def test_target_bitrate_on_real_frames(codec, tmp_path):
    frames = real_frames()
    target = 150.0
    result = encode_video(frames, codec, kbps=target, fps=24, gop=12)
    assert result.reachable and result.target_kbps == target
    assert abs(result.kbps / target - 1) <= 0.05, result.kbps
    assert 2 <= result.num_encodes <= 12 and result.qp is None and 0 <= result.crf <= 51
    # the rate counts every video packet: 8 * bytes over 24 frames at 24 fps = 1 s
    assert result.kbps == pytest.approx(8 * sum(result.frame_bytes) / 1000)
    assert len(result.bpp) == 24 and result.mean_bpp == pytest.approx(np.mean(result.bpp))
    assert result.mean_bpp == pytest.approx(kbps_to_bpp(result.kbps, WIDTH, HEIGHT, 24))
    # inter-coded with a GOP of 12: keyframes (the largest packets) at frames 0 and 12, P/B pictures far smaller
    assert sorted(np.argsort(result.frame_bytes)[-2:]) == [0, 12]
    assert max(result.frame_bytes[1:12]) < result.frame_bytes[0] / 2
    for suffix in ('mp4', 'mkv'):
        path = tmp_path / f'out.{suffix}'
        write_video(result, path)
        assert np.array_equal(stock_decode(path), result.frames)  # what a player decodes from the file
        written = run_ffmpeg(resolve_ffmpeg(), ['-i', str(path), '-map', '0:v:0', '-c', 'copy', '-f', 'framecrc',
                                                'pipe:1']).decode()
        sizes = [int(line.split(',')[4]) for line in written.splitlines() if line and not line.startswith('#')]
        assert sorted(sizes) == sorted(result.frame_bytes)  # the file holds exactly the counted packets
    psnr = 10 * np.log10(255 ** 2 / np.mean((result.frames.astype(float) - np.stack(frames)) ** 2))
    assert psnr > 28


def test_stream_signals_bt601_limited_range(tmp_path):
    result = encode_video(real_frames(4), 'libx264', crf=23)
    path = tmp_path / 'out.mp4'
    write_video(result, path)
    info = subprocess.run([resolve_ffmpeg(), '-hide_banner', '-i', str(path)], capture_output=True, text=True).stderr
    assert re.search(r'yuv420p\(tv, smpte170m[,)]', info), info  # matrix, primaries, transfer: BT.601


def test_qp_crf_and_file_size_modes():
    frames = real_frames(12)
    low, high = encode_video(frames, 'libx264', qp=40), encode_video(frames, 'libx264', qp=24)
    assert low.qp == 40 and low.kbps < high.kbps
    assert encode_video(frames, 'libx265', crf=35).kbps < encode_video(frames, 'libx265', crf=20).kbps
    sized = encode_video(frames, 'libx264', size_bytes=6000, fps=12)  # 12 frames at 12 fps: 48 kbps
    assert sized.target_kbps == pytest.approx(48.0) and abs(sized.num_bytes / 6000 - 1) <= 0.02


def test_unreachable_bitrate_is_flagged():
    with pytest.warns(RuntimeWarning, match='outside what libx264 reaches'):
        result = encode_video(real_frames(6), 'libx264', kbps=1e6)
    assert not result.reachable and result.crf < 5
    assert 'outside what libx264 reaches' in result.note and result.kbps < 1e6 / 2


@pytest.mark.parametrize('frames, message', [
    ([np.zeros((96, 128, 3), np.uint8), np.zeros((64, 128, 3), np.uint8)], 'frame 1 is 128x64 but frame 0 is 128x96'),
    ([np.zeros((95, 128, 3), np.uint8)] * 2, 'even width and height'),
    ([np.zeros((96, 128), np.uint8)] * 2, 'grayscale'),
    ([], 'no frames'),
])
def test_bad_frames_name_the_problem(frames, message):
    with pytest.raises(ValueError, match=message):
        encode_video(frames, 'libx264', crf=23)


@pytest.mark.parametrize('kwargs, message', [
    (dict(codec='libvvenc', crf=23), 'video coding supports libx264, libx265'),
    (dict(crf=23, kbps=100), 'exactly one of'),
    (dict(qp=60), r"range \[0, 51\]"),
    (dict(crf=23, fps=0), 'fps must be'),
    (dict(crf=23, gop=0), 'gop must be'),
    (dict(crf=23, preset='fastest'), 'preset must be one of'),
])
def test_bad_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        encode_video(real_frames(2), **{'codec': 'libx264', **kwargs})


def test_missing_ffmpeg_is_named(monkeypatch):
    monkeypatch.setenv('VRPSR_FFMPEG', '/nonexistent/ffmpeg')
    with pytest.raises(FFmpegNotFoundError, match='/nonexistent/ffmpeg'):
        encode_video(real_frames(2), 'libx264', crf=23)


def run_cli(capsys, *args) -> tuple:
    """``vrpsr compress-video ARGS`` in-process: (status, stdout, stderr)."""
    status = cli.main(['compress-video', *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_codes_a_folder_and_a_video(tmp_path, capsys):
    frames_dir = tmp_path / 'frames'
    frames_dir.mkdir()
    for i, frame in enumerate(real_frames(12)):
        cv2.imwrite(str(frames_dir / f'{i:03d}.png'), frame[..., ::-1])
    out = tmp_path / 'out' / 'video.mp4'
    out.parent.mkdir()
    status, out_text, err = run_cli(capsys, frames_dir, out, '--codec', 'libx265', '--kbps', 60, '--fps', 12,
                                    '--gop', 6)
    assert status == 0, err
    fields = dict(item.split('=', 1) for item in out_text.split())
    assert fields['codec'] == 'libx265' and fields['frames'] == '12' and fields['size'] == f'{WIDTH}x{HEIGHT}'
    assert abs(float(fields['kbps']) / 60 - 1) <= 0.05 and files_in(out.parent) == ['video.mp4']
    assert stock_decode(out).shape == (12, HEIGHT, WIDTH, 3)
    # a video file as input (frame rate taken from it), a file size as target
    again = tmp_path / 'out' / 'again.mkv'
    status, out_text, err = run_cli(capsys, out, again, '--size', '3k')
    assert status == 0, err
    fields = dict(item.split('=', 1) for item in out_text.split())
    assert fields['fps'] == '12' and abs(int(fields['bytes']) / 3000 - 1) <= 0.05


@pytest.mark.parametrize('make, args, message', [
    (lambda d: real_frames(4), ['--kbps', 1e6], 'outside what libx264 reaches'),
    (lambda d: [f[:95] for f in real_frames(4)], ['--crf', 23], 'even width and height'),
    (lambda d: real_frames(3) + [real_frames(1)[0][:64]], ['--crf', 23], 'but frame 0 is'),
])
def test_cli_errors_leave_nothing_behind(tmp_path, capsys, make, args, message):
    frames_dir = tmp_path / 'frames'
    frames_dir.mkdir()
    for i, frame in enumerate(make(tmp_path)):
        cv2.imwrite(str(frames_dir / f'{i:03d}.png'), np.ascontiguousarray(frame[..., ::-1]))
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    status, _, err = run_cli(capsys, frames_dir, out_dir / 'video.mp4', *args)
    assert status == 2 and message in err and 'Traceback' not in err
    assert files_in(out_dir) == []


def test_kbps_to_bpp():
    assert kbps_to_bpp(2000, 1920, 1080, 25) == pytest.approx(2e6 / (25 * 1920 * 1080))
    with pytest.raises(ValueError, match='fps'):
        kbps_to_bpp(2000, 1920, 1080, 0)
