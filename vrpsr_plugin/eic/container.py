"""The ``.vrp`` file of ASSR-EIC: a 24-byte versioned header and the codec's single-picture bitstream.

Header (big-endian), version 1::

    magic b'VEIC' | version u8 | codec id u8 | QP u8 | flags u8 (0) | width u16 | height u16
    | coded width u16 | coded height u16 | bitstream length u32 | CRC-32 of header fields and bitstream u32

The decoder's condition (codec, QP, s = original size / coded size) is read from it. The bpp of a file is
8 x file size / (width x height): header included.
"""
import struct
import zlib
from dataclasses import dataclass

MAGIC = b'VEIC'
VERSION = 1
# codec ids of the header; append only (old files keep their meaning)
CODEC_IDS = ('libx264', 'libx265', 'libvvenc', 'libsvtav1', 'jpeg', 'libwebp')
_FIELDS = struct.Struct('>4sBBBBHHHHI')
HEADER_SIZE = _FIELDS.size + 4


class EICFormatError(ValueError):
    """A file that is not a complete, intact ASSR-EIC file of a version this build reads."""


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
        return 8.0 * (HEADER_SIZE + len(self.bitstream)) / (self.width * self.height)

    def to_bytes(self) -> bytes:
        if self.codec not in CODEC_IDS:
            raise ValueError(f'codec {self.codec!r} has no id in the file format; known: {", ".join(CODEC_IDS)}')
        for name in ('qp', 'width', 'height', 'coded_width', 'coded_height'):
            value = getattr(self, name)
            limit = 255 if name == 'qp' else 65535
            if not (isinstance(value, int) and 0 <= value <= limit):
                raise ValueError(f'{name} must be an integer in [0, {limit}], got {value!r}')
        if not (0 < self.coded_width <= self.width and 0 < self.coded_height <= self.height):
            raise ValueError(f'coded size {self.coded_width}x{self.coded_height} must be positive and at most the '
                             f'original {self.width}x{self.height}')
        fields = _FIELDS.pack(MAGIC, VERSION, CODEC_IDS.index(self.codec), self.qp, 0, self.width, self.height,
                              self.coded_width, self.coded_height, len(self.bitstream))
        return fields + struct.pack('>I', zlib.crc32(fields + self.bitstream)) + self.bitstream

    @classmethod
    def from_bytes(cls, data: bytes, name: str = 'file') -> 'EICFile':
        """Parse ``data``; :class:`EICFormatError` names what is wrong (foreign, newer, truncated, corrupt)."""
        if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
            raise EICFormatError(f'{name} is not an ASSR-EIC file (it does not start with {MAGIC!r})')
        if len(data) < HEADER_SIZE:
            raise EICFormatError(f'{name} is truncated: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header')
        _, version, codec_id, qp, flags, width, height, cw, ch, length = _FIELDS.unpack_from(data)
        if version != VERSION:
            raise EICFormatError(f'{name} is ASSR-EIC format version {version}; this build reads version {VERSION}')
        body = data[HEADER_SIZE:]
        if len(body) < length:
            raise EICFormatError(f'{name} is truncated: the header announces {length} bytes of bitstream, the file '
                                 f'holds {len(body)}')
        if len(body) > length:
            raise EICFormatError(f'{name} has {len(body) - length} bytes after the bitstream (corrupt or '
                                 f'concatenated)')
        (crc,) = struct.unpack_from('>I', data, _FIELDS.size)
        if zlib.crc32(data[:_FIELDS.size] + body) != crc:
            raise EICFormatError(f'{name} is corrupt: checksum mismatch')
        if codec_id >= len(CODEC_IDS) or flags:
            raise EICFormatError(f'{name} uses codec id {codec_id} / flags {flags} unknown to this build')
        if not (0 < cw <= width and 0 < ch <= height):
            raise EICFormatError(f'{name} has an invalid coded size {cw}x{ch} for a {width}x{height} picture')
        return cls(CODEC_IDS[codec_id], qp, width, height, cw, ch, bytes(body))
