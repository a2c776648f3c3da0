"""Real image codecs (x264, x265, vvenc, ... through ffmpeg) and the codec condition of the paper.

``encode`` runs one picture through a codec at a constant QP or CRF; ``find_qp`` matches a target bitrate
(Eq. 2); see docs/codecs.md.
"""
from vrpsr_plugin.codecs.condition import CONDITION_CODECS, CodecCondition
from vrpsr_plugin.codecs.encode import CodecResult, available_codecs, decode, encode
from vrpsr_plugin.codecs.encoders import CODECS, qp_range
from vrpsr_plugin.codecs.errors import CodecError, CodecTimeoutError, EncoderUnavailableError, FFmpegNotFoundError
from vrpsr_plugin.codecs.inputs import load_image
from vrpsr_plugin.codecs.rate_match import find_qp

__all__ = ['CONDITION_CODECS', 'CodecCondition', 'CODECS', 'CodecResult', 'encode', 'decode', 'find_qp', 'available_codecs', 'qp_range',
           'CodecError', 'CodecTimeoutError', 'EncoderUnavailableError', 'FFmpegNotFoundError', 'load_image']
