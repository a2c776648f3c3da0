"""The ``.vrp`` file of ASSR-EIC: a compact versioned header and the codec's single-picture bitstream.

Version 2 (written); ``varint`` is unsigned LEB128 (1 byte up to 127, 2 up to 16383)::

    magic b'VE' | version u8 (2) | codec id << 4 | flags u8 | QP u8 | width, height, coded width, coded height varints
    | flags & 1: n varint + the parameter sets deflated against the codec's dictionary (n bytes)
    | length of the rest of the bitstream varint | CRC-32 (big-endian) of the bytes before it and of the bitstream
    | the rest of the bitstream (the slice data), verbatim but for its leading start code
      (flags & 2: 00 00 01, flags & 4: 00 00 00 01)

The parameter sets (everything before the first slice: VPS/SPS/PPS of x265, 85-90 bytes; 40-45 of x264; 190-200 of
vvenc) are the same for every picture but for a few size- and QP-dependent fields, so they are stored deflated against
a fixed dictionary of such parameter sets (``dictionaries/CODEC.bin``, :mod:`scripts.make_eic_dictionaries`): 10-30
bytes. BPG (Bellard's HEVC still-image format) saves the same bytes by rebuilding the parameter sets from its header;
deflate keeps the format independent of the encoder's settings and is lossless by construction (the CRC covers the
reconstructed bitstream). At 256x256 and 0.03 bpp this is a third of the file.

Version 1 (read only): ``b'VEIC' | 1 | codec id | QP | flags (0) | width u16 | height u16 | coded width u16 |
coded height u16 | bitstream length u32 | CRC-32 u32 | bitstream`` (24 bytes of header).

The decoder's condition (codec, QP, s = original size / coded size) is read from the header. The bpp of a file is
8 x file size / (width x height): everything included.
"""
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Tuple

VERSION = 2
MAGIC = b'VE'
# codec ids of the header; append only (old files keep their meaning); 16 fit the header's nibble
CODEC_IDS = ('libx264', 'libx265', 'libvvenc', 'libsvtav1', 'jpeg', 'libwebp')
DICTIONARY_CODECS = ('libx264', 'libx265', 'libvvenc')  # those with a parameter-set dictionary in format 2
FLAG_DEFLATED_PARAMETER_SETS = 1
# the rest of the bitstream began with this start code, which is not stored
START_CODE_FLAGS = {2: b'\x00\x00\x01', 4: b'\x00\x00\x00\x01'}
_FLAGS = FLAG_DEFLATED_PARAMETER_SETS | sum(START_CODE_FLAGS)
# nal_unit_type of the slice (VCL) NAL units: what follows the parameter sets
_NAL = {'libx264': ('h264', range(1, 6)), 'libx265': ('hevc', range(0, 32)), 'libvvenc': ('vvc', range(0, 12))}
_V1_MAGIC = b'VEIC'
_V1_FIELDS = struct.Struct('>4sBBBBHHHHI')


class EICFormatError(ValueError):
    """A file that is not a complete, intact ASSR-EIC file of a version this build reads."""


def split_parameter_sets(bitstream: bytes, codec: str) -> Tuple[bytes, bytes]:
    """(everything before the first slice NAL unit, the rest) of an Annex-B ``bitstream`` of ``codec``."""
    from vrpsr_plugin.codecs.encoders import nal_units
    nal, vcl = _NAL[codec]
    start = next((begin for begin, kind in nal_units(bitstream, nal) if kind in vcl), 0)
    return bitstream[:start], bitstream[start:]


@lru_cache(maxsize=None)
def _dictionary(codec: str) -> bytes:
    return (resources.files('vrpsr_plugin.eic') / 'dictionaries' / f'{codec}.bin').read_bytes()


def _deflate(data: bytes, codec: str) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=_dictionary(codec))
    return packer.compress(data) + packer.flush()


def _inflate(data: bytes, codec: str, name: str) -> bytes:
    unpacker = zlib.decompressobj(-15, zdict=_dictionary(codec))
    try:
        out = unpacker.decompress(data) + unpacker.flush()
    except zlib.error:
        raise EICFormatError(f'{name} is corrupt: its parameter sets do not inflate') from None
    if not unpacker.eof or unpacker.unused_data:
        raise EICFormatError(f'{name} is corrupt: its parameter sets do not inflate')
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _check_length(length: int, body: bytes, name: str) -> None:
    if len(body) < length:
        raise EICFormatError(f'{name} is truncated: the header announces {length} bytes of bitstream, the file holds '
                             f'{len(body)}')
    if len(body) > length:
        raise EICFormatError(f'{name} has {len(body) - length} bytes after the bitstream (corrupt or concatenated)')


class _Reader:
    """Reads the header fields of ``data``; running out of bytes is a truncated file."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name, self.pos = data, name, 0

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise EICFormatError(f'{self.name} is truncated: it ends inside the header')
        self.pos += count
        return self.data[self.pos - count:self.pos]

    def varint(self) -> int:
        value = 0
        for shift in range(0, 35, 7):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise EICFormatError(f'{self.name} is corrupt: a header number is too long')


@dataclass(frozen=True)
class EICFile:
    """One coded picture: codec, QP, original (width, height), coded (width, height) and the bitstream."""
    codec: str
    qp: int
    width: int
    height: int
    coded_width: int
    coded_height: int
    bitstream: bytes

    @property
    def scale(self) -> float:
        """The rescaling factor s (geometric mean of the two axes' factors)."""
        return (self.width * self.height / (self.coded_width * self.coded_height)) ** 0.5

    @property
    def bpp(self) -> float:
        """Bits of the whole file per original pixel."""
        return 8.0 * len(self.to_bytes()) / (self.width * self.height)

    def to_bytes(self) -> bytes:
        """The version-2 file."""
        if self.codec not in CODEC_IDS:
            raise ValueError(f'codec {self.codec!r} has no id in the file format; known: {", ".join(CODEC_IDS)}')
        for field_name in ('qp', 'width', 'height', 'coded_width', 'coded_height'):
            value = getattr(self, field_name)
            limit = 255 if field_name == 'qp' else 65535
            if not (isinstance(value, int) and 0 <= value <= limit):
                raise ValueError(f'{field_name} must be an integer in [0, {limit}], got {value!r}')
        if not (0 < self.coded_width <= self.width and 0 < self.coded_height <= self.height):
            raise ValueError(f'coded size {self.coded_width}x{self.coded_height} must be positive and at most the '
                             f'original {self.width}x{self.height}')
        flags, packed, rest = 0, b'', self.bitstream
        if self.codec in DICTIONARY_CODECS:
            head, tail = split_parameter_sets(self.bitstream, self.codec)
            deflated = _deflate(head, self.codec)
            if head and len(_varint(len(deflated))) + len(deflated) < len(head):
                flags, packed, rest = FLAG_DEFLATED_PARAMETER_SETS, _varint(len(deflated)) + deflated, tail
            for flag, code in sorted(START_CODE_FLAGS.items(), reverse=True):
                if rest.startswith(code):
                    flags, rest = flags | flag, rest[len(code):]
                    break
        fields = (MAGIC + bytes([VERSION, CODEC_IDS.index(self.codec) << 4 | flags, self.qp])
                  + b''.join(_varint(v) for v in (self.width, self.height, self.coded_width, self.coded_height))
                  + packed + _varint(len(rest)))
        return fields + struct.pack('>I', zlib.crc32(fields + self.bitstream)) + rest

    @classmethod
    def from_bytes(cls, data: bytes, name: str = 'file') -> 'EICFile':
        """Parse ``data``; :class:`EICFormatError` names what is wrong (foreign, newer, truncated, corrupt)."""
        if data[:len(_V1_MAGIC)] == _V1_MAGIC:
            return cls._from_v1(data, name)
        if len(data) < 3 or data[:len(MAGIC)] != MAGIC:
            raise EICFormatError(f'{name} is not an ASSR-EIC file (it does not start with {MAGIC!r})')
        if data[2] != VERSION:
            raise EICFormatError(f'{name} is ASSR-EIC format version {data[2]}; this build reads versions 1 and '
                                 f'{VERSION}')
        reader = _Reader(data, name)
        reader.take(3)
        codec_byte, qp = reader.take(2)
        codec_id, flags = codec_byte >> 4, codec_byte & 0x0F
        omitted = [code for flag, code in START_CODE_FLAGS.items() if flags & flag]
        width, height, cw, ch = (reader.varint() for _ in range(4))
        if codec_id >= len(CODEC_IDS) or flags & ~_FLAGS or len(omitted) > 1 or \
                (flags and CODEC_IDS[codec_id] not in DICTIONARY_CODECS):
            raise EICFormatError(f'{name} uses codec id {codec_id} / flags {flags} unknown to this build')
        codec = CODEC_IDS[codec_id]
        deflated = reader.take(reader.varint()) if flags & FLAG_DEFLATED_PARAMETER_SETS else b''
        length = reader.varint()
        fields_end = reader.pos
        (crc,) = struct.unpack('>I', reader.take(4))
        rest = data[reader.pos:]
        _check_length(length, rest, name)
        bitstream = ((_inflate(deflated, codec, name) if flags & FLAG_DEFLATED_PARAMETER_SETS else b'')
                     + b''.join(omitted) + rest)
        if zlib.crc32(data[:fields_end] + bitstream) != crc:
            raise EICFormatError(f'{name} is corrupt: checksum mismatch')
        return cls._checked(codec, qp, width, height, cw, ch, bitstream, name)

    @classmethod
    def _checked(cls, codec: str, qp: int, width: int, height: int, cw: int, ch: int, bitstream: bytes,
                 name: str) -> 'EICFile':
        if not (0 < cw <= width and 0 < ch <= height):
            raise EICFormatError(f'{name} has an invalid coded size {cw}x{ch} for a {width}x{height} picture')
        return cls(codec, qp, width, height, cw, ch, bitstream)

    @classmethod
    def _from_v1(cls, data: bytes, name: str) -> 'EICFile':
        header_size = _V1_FIELDS.size + 4
        if len(data) < header_size:
            raise EICFormatError(f'{name} is truncated: {len(data)} bytes, shorter than the {header_size}-byte header')
        _, version, codec_id, qp, flags, width, height, cw, ch, length = _V1_FIELDS.unpack_from(data)
        if version != 1:
            raise EICFormatError(f'{name} is ASSR-EIC format version {version}; this build reads versions 1 and '
                                 f'{VERSION}')
        body = data[header_size:]
        _check_length(length, body, name)
        (crc,) = struct.unpack_from('>I', data, _V1_FIELDS.size)
        if zlib.crc32(data[:_V1_FIELDS.size] + body) != crc:
            raise EICFormatError(f'{name} is corrupt: checksum mismatch')
        if codec_id >= len(CODEC_IDS) or flags:
            raise EICFormatError(f'{name} uses codec id {codec_id} / flags {flags} unknown to this build')
        return cls._checked(CODEC_IDS[codec_id], qp, width, height, cw, ch, bytes(body), name)

