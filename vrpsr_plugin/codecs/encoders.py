"""Per-codec settings: encoder options for constant-QP and CRF mode, QP ranges, minimum sizes (§3.1, App. A.2).

Constant QP means the picture's slice is coded at exactly the requested QP: the encoders' default intra-QP
offsets are removed and adaptive quantisation is off (so no per-block QP deltas). CRF mode is the encoder's own
rate control with its defaults. Every codec codes one intra picture in yuv420 (10 bit for vvenc).

| codec      | ffmpeg encoder | constant-QP options                                                          |
|------------|----------------|------------------------------------------------------------------------------|
| libx264    | libx264        | -qp Q -x264-params ipratio=1:aq-mode=0:mbtree=0                              |
| libx265    | libx265        | -x265-params qp=Q:ipratio=1:aq-mode=0:cutree=0:info=0                        |
| libvvenc   | libvvenc       | -qp Q -qpa 0 -vvenc-params IntraQPOffset=0                                   |
| libsvtav1  | libsvtav1      | -qp Q -svtav1-params rc=0:aq-mode=0:enable-tpl-la=0:use-fixed-qindex-offsets=1:key-frame-qindex-offset=0:key-frame-chroma-qindex-offset=0 (base_q_idx = 4Q, 255 at 63) |
| jpeg       | mjpeg          | -q:v Q -qmin 1 (the "QP" is the JPEG qscale, 1..31)                           |
| libwebp    | libwebp        | -quality Q (0..100; the rate *increases* with Q)                              |

Every stream carries its colour description (H.264/H.265/H.266 VUI, AV1 colour config), so external players
decode it as ``yuv.py`` does: BT.601 (primaries, transfer, matrix: smpte170m), limited range; JPEG is full range
(JFIF). WebP's VP8 syntax has no such fields (it is BT.601 limited range by definition).
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

Options = List[Tuple[str, str]]  # encoder options, in order: ('qp', '30') -> '-qp 30' / ctx.options['qp']

# Colour description: PyAV attribute (= ffmpeg option) -> (ffmpeg value name, libavutil code = H.273 code).
COLOUR = {'color_primaries': ('smpte170m', 6), 'color_trc': ('smpte170m', 6), 'colorspace': ('smpte170m', 6)}
COLOUR_RANGE = {False: ('tv', 1), True: ('pc', 2)}  # AVColorRange of limited / full range


@dataclass(frozen=True)
class CodecSpec:
    """How one codec is driven. ``qp_range``/``crf_range`` are inclusive; ``rate_decreases`` says whether the
    bitrate falls as the QP parameter rises (False for WebP's quality). ``nal`` names the Annex-B NAL syntax
    used to strip the encoder's informational SEI; ``pyav_decoder`` is set where PyAV can run the codec."""
    name: str
    encoder: str
    muxer: str
    demuxer: str
    qp_range: Tuple[int, int]
    crf_range: Optional[Tuple[float, float]]
    default_preset: Optional[str]
    bit_depth: int = 8
    full_range: bool = False
    min_size: int = 16
    rate_decreases: bool = True
    qp_start: int = 30
    log_rate_slope: float = -0.115  # d ln(bpp) / d QP prior (H.26x: the rate halves every ~6 QP)
    nal: Optional[str] = None
    pyav_decoder: Optional[str] = None
    has_preset: bool = True

    @property
    def pix_fmt(self) -> str:
        """ffmpeg pixel format of the planes handed to / read from the codec."""
        if self.bit_depth == 10:
            return 'yuv420p10le'
        return 'yuvj420p' if self.full_range else 'yuv420p'

    def colour(self) -> Dict[str, Tuple[str, int]]:
        """The colour description to signal: ``COLOUR`` plus ``color_range`` (full for JPEG)."""
        return {**COLOUR, 'color_range': COLOUR_RANGE[self.full_range]}

    def options(self, qp: Optional[int], crf: Optional[float], preset: Optional[str],
                profile: Optional[str] = None) -> Options:
        """Encoder options for constant-QP (``qp``) or CRF (``crf``) mode, with ``preset`` or a named
        ``profile`` (:data:`PROFILES`; a codec the profile does not name keeps its default preset)."""
        extra: Options = []
        if profile is not None:
            if profile not in PROFILES:
                raise ValueError(f'unknown encoder profile {profile!r}; choose one of {sorted(PROFILES)}')
            if preset is not None:
                raise ValueError(f'give preset or profile, not both (got {preset!r} and {profile!r})')
            preset, extra = PROFILES[profile].get(self.name, (None, []))
        if preset is not None and not self.has_preset:
            raise ValueError(f'{self.name} has no presets (got preset={preset!r})')
        preset = self.default_preset if preset is None else preset
        opts: Options = [('preset', str(preset))] if preset is not None else []
        return opts + list(extra) + _MODE_OPTIONS[self.name](qp, crf)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _x264(qp, crf) -> Options:
    if qp is not None:
        return [('qp', str(qp)), ('x264-params', 'ipratio=1:aq-mode=0:mbtree=0')]
    return [('crf', _fmt(crf))]


def _x265(qp, crf) -> Options:
    if qp is not None:
        return [('x265-params', f'qp={qp}:ipratio=1:aq-mode=0:cutree=0:info=0:log-level=error')]
    return [('crf', _fmt(crf)), ('x265-params', 'info=0:log-level=error')]


def _vvenc(qp, crf) -> Options:
    return [('qp', str(qp)), ('qpa', '0'), ('vvenc-params', 'IntraQPOffset=0')]


def _svtav1(qp, crf) -> Options:
    if qp is not None:
        return [('qp', str(qp)), ('svtav1-params', 'rc=0:aq-mode=0:enable-tpl-la=0:use-fixed-qindex-offsets=1:'
                                                   'key-frame-qindex-offset=0:key-frame-chroma-qindex-offset=0')]
    return [('crf', _fmt(crf))]


def _mjpeg(qp, crf) -> Options:
    return [('q:v', str(qp)), ('qmin', '1')]


def _webp(qp, crf) -> Options:
    return [('quality', str(qp)), ('lossless', '0')]


# Named encoder profiles: codec -> (preset, extra options). 'authors': the encoders of the VRPSR authors' code
# (vvenc preset faster, x264 medium, x265 placebo tuned for PSNR); without a profile every codec runs at its
# default_preset (medium). The paper's option files use 'authors' (docs/codecs.md).
PROFILES: Dict[str, Dict[str, Tuple[str, Options]]] = {
    'authors': {'libx264': ('medium', []), 'libx265': ('placebo', [('tune', 'psnr')]), 'libvvenc': ('faster', [])},
}

_MODE_OPTIONS = {'libx264': _x264, 'libx265': _x265, 'libvvenc': _vvenc, 'libsvtav1': _svtav1,
                 'jpeg': _mjpeg, 'libwebp': _webp}

CODECS: Dict[str, CodecSpec] = {s.name: s for s in (
    CodecSpec('libx264', 'libx264', 'h264', 'h264', (0, 51), (0, 51), 'medium', qp_start=30, nal='h264',
              pyav_decoder='h264'),
    CodecSpec('libx265', 'libx265', 'hevc', 'hevc', (0, 51), (0, 51), 'medium', qp_start=30, nal='hevc',
              pyav_decoder='hevc'),
    CodecSpec('libvvenc', 'libvvenc', 'vvc', 'vvc', (0, 63), None, 'medium', bit_depth=10, min_size=32,
              qp_start=32, nal='vvc'),
    CodecSpec('libsvtav1', 'libsvtav1', 'obu', 'obu', (1, 63), (1, 63), '8', qp_start=35, log_rate_slope=-0.07),
    CodecSpec('jpeg', 'mjpeg', 'mjpeg', 'mjpeg', (1, 31), None, None, full_range=True, qp_start=6,
              log_rate_slope=-0.08, has_preset=False),
    CodecSpec('libwebp', 'libwebp', 'webp', 'webp_pipe', (0, 100), None, None, rate_decreases=False,
              qp_start=75, log_rate_slope=0.02),
)}


def get_spec(codec: str) -> CodecSpec:
    """The :class:`CodecSpec` of ``codec``; ValueError naming the known codecs otherwise."""
    try:
        return CODECS[codec]
    except (KeyError, TypeError):
        raise ValueError(f'unknown codec {codec!r}; known codecs: {", ".join(CODECS)}') from None


def qp_range(codec: str) -> Tuple[int, int]:
    """Inclusive range of the QP parameter of ``codec`` (JPEG: qscale, WebP: quality, AV1: SVT-AV1's QP)."""
    return get_spec(codec).qp_range


def nal_type(bitstream: bytes, header: int, nal: str) -> int:
    """nal_unit_type of the NAL unit whose header starts at ``header``."""
    if nal == 'h264':
        return bitstream[header] & 0x1F
    if nal == 'hevc':
        return (bitstream[header] >> 1) & 0x3F
    return (bitstream[header + 1] >> 3) & 0x1F if header + 1 < len(bitstream) else -1  # vvc: second byte


SEI_TYPES = {'h264': (6,), 'hevc': (39, 40), 'vvc': (23, 24)}


def nal_units(bitstream: bytes, nal: str) -> List[Tuple[int, int]]:
    """(first byte of the start code, nal_unit_type; -1 for a start code at the very end) of each NAL unit of an
    Annex-B stream. A 4-byte start code's leading zero belongs to its unit."""
    units = []
    for match in re.finditer(b'\x00\x00\x01', bitstream):  # never inside a NAL unit (emulation prevention)
        code = match.start()
        begin = code - 1 if code > 0 and bitstream[code - 1] == 0 else code
        units.append((begin, nal_type(bitstream, match.end(), nal) if match.end() < len(bitstream) else -1))
    return units


def _strip_sei(bitstream: bytes, nal: str) -> bytes:
    """Drop the SEI NAL units (the encoders' version/options text, up to ~2 kB) from an Annex-B stream.
    Parameter sets and slices are kept byte for byte, so the result is the whole decodable picture."""
    units = nal_units(bitstream, nal)
    if not units:
        return bitstream
    ends = [begin for begin, _ in units[1:]] + [len(bitstream)]
    kept = [bitstream[begin:end] for (begin, kind), end in zip(units, ends) if kind not in SEI_TYPES[nal]]
    return bitstream[:units[0][0]] + b''.join(kept)


def strip_sei(bitstream: bytes, spec: CodecSpec) -> bytes:
    """:func:`_strip_sei` for NAL-based codecs; other bitstreams are returned unchanged."""
    return _strip_sei(bitstream, spec.nal) if spec.nal else bitstream
