"""Exceptions of the codec layer. Bad arguments raise ValueError; failures of the codec machinery raise these."""


class CodecError(RuntimeError):
    """An encoder or decoder failed (ffmpeg crashed, PyAV raised, the output was unusable)."""


class FFmpegNotFoundError(CodecError, FileNotFoundError):
    """The ffmpeg binary is not at the resolved path (argument, ``VRPSR_FFMPEG``, or imageio-ffmpeg's)."""


class EncoderUnavailableError(CodecError):
    """The requested encoder is not compiled into this ffmpeg (or PyAV) build."""


class CodecTimeoutError(CodecError, TimeoutError):
    """ffmpeg ran past its timeout and was killed."""
