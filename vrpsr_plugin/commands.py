"""How every command of this package ends: ``vrpsr ...``, ``vrpsr_plugin/train.py`` and ``vrpsr_plugin/test.py``.

- SIGTERM and SIGHUP unwind the program as Ctrl-C (SIGINT) does, so every ``finally`` block runs: the ffmpeg
  children of :func:`vrpsr_plugin.codecs.ffmpeg_route.run_ffmpeg` are killed and temporary files removed before
  the process exits (status 128 + signal number). The default action would end Python at once and orphan them.
- A user error (bad option file or argument, missing file, unknown registry name, corrupt checkpoint, codec
  failure) prints one ``<prog>: error: <message>`` line on stderr and exits with status 2; ``--debug`` shows the
  traceback. Any other exception is a bug and keeps its traceback.

Imports nothing heavy: the CLI starts fast.
"""
import os
import signal
import sys
import traceback
from typing import Callable, Tuple, Type

from vrpsr_plugin.codecs.errors import CodecError

EXIT_USER_ERROR = 2
WORKER_EXIT_GRACE = 10.0  # s from SIGTERM to a worker's exit, whatever catches the exception


class UserError(Exception):
    """Base of this package's errors that name a problem of the user's input (not a bug)."""


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM/SIGHUP so that the program unwinds; exit status 128 + signal."""


def _user_errors() -> Tuple[Type[BaseException], ...]:
    errors = [UserError, CodecError, OSError, ValueError, KeyError, FloatingPointError]
    yaml = sys.modules.get('yaml')  # option files are parsed with PyYAML; its module is loaded if it ran
    if yaml is not None:
        errors.append(yaml.YAMLError)
    return tuple(errors)


def _raise_terminated(signum: int, _frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    raise Terminated(128 + signum)


def _raise_terminated_then_exit(signum: int, frame) -> None:
    """A worker's :func:`_raise_terminated` that also exits the process ``WORKER_EXIT_GRACE`` s later: a pool's
    worker loop catches every exception raised between its tasks (or while it sends a result back) and then waits
    for a next task that never comes, which left its parent waiting for it forever (seen once in CI)."""
    import threading
    timer = threading.Timer(WORKER_EXIT_GRACE, os._exit, args=(128 + signum,))
    timer.daemon = True
    timer.start()
    _raise_terminated(signum, frame)


def unwind_on_termination(handler: Callable = _raise_terminated) -> None:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` (idempotent; main thread only)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def stop_with_parent(parent: int) -> None:
    """Initializer of worker processes (DataLoader, process pools): SIGTERM unwinds the worker (its ffmpeg children
    are killed by their ``finally``) and the worker exits at the latest ``WORKER_EXIT_GRACE`` s later; the kernel
    sends it SIGTERM when ``parent`` (the pid that started it) dies (Linux). A worker whose parent already died
    exits."""
    unwind_on_termination(_raise_terminated_then_exit)
    try:
        import ctypes
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers exit when they find their queue or pipe closed
    if os.getppid() != parent:  # the parent died while this worker was starting, before the signal was armed
        os._exit(1)


def run_command(prog: str, main: Callable[[], int], debug: bool = False) -> int:
    """Run ``main()`` under this module's conventions and return the exit status."""
    unwind_on_termination()
    try:
        return main()
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as exc:
        print(f'{prog}: terminated', file=sys.stderr)
        return exc.code
    except _user_errors() as exc:
        if debug:
            traceback.print_exc()
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f'{prog}: error: {message or type(exc).__name__}', file=sys.stderr)
        return EXIT_USER_ERROR
