"""Real image codecs (x264, x265, vvenc, ... through ffmpeg) and the codec condition of the paper."""
from vrpsr_plugin.codecs.condition import CONDITION_CODECS, CodecCondition

__all__ = ['CONDITION_CODECS', 'CodecCondition']
