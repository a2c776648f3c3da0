"""Where the sharded work of ``vrpsr prepare-bank`` and ``vrpsr eval`` runs: this process or a local process pool
(``--engine local``, the default) or a Ray cluster (``--engine ray [--address ADDR]``; ``pip install
vrpsr_plugin[cluster]``). See docs/cluster.md.

A task is ``fn(*args)`` with ``fn`` a module-level function of the package (workers import it by name). Every task
writes its shard atomically and skips work already on disk, so a retried task (both engines re-run the tasks of a
worker that died) or a repeated run is harmless. :meth:`Engine.map` returns the results in task order whatever order the tasks
finished in, so the output does not depend on the engine or on the number of workers.
"""
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, List, Optional, Sequence

from tqdm import tqdm

from vrpsr_plugin.commands import Terminated, UserError, stop_with_parent

ENGINES = ('local', 'ray')
RAY_INSTALL = 'pip install "vrpsr_plugin[cluster]" (or pip install "ray>=2.9")'
TASK_RETRIES = 3  # a task whose worker process died is re-run up to this many times


def add_engine_arguments(parser: Any, default_workers: str) -> None:
    """``--engine``, ``--address`` and ``--workers`` of the sharded commands."""
    parser.add_argument('--engine', choices=ENGINES, default='local',
                        help='local: this machine (process pool); ray: a Ray cluster (%s)' % RAY_INSTALL)
    parser.add_argument('--address', default=None,
                        help='Ray cluster address (e.g. auto or ray://HEAD:10001); default: start Ray locally')
    parser.add_argument('--workers', type=int, default=None,
                        help=f'tasks run at once (default: {default_workers}); 1 with --engine local runs in this '
                             'process')


def run_in_worker(fn: Callable, *args):
    """A pool task: ``fn(*args)``; on SIGTERM (the parent died or stopped the pool) the task unwinds, killing its
    ffmpeg, and the worker exits. Without this the pool's own ``except BaseException`` would return the signal to
    the (dead) parent as the task's error and the worker would wait for its next task forever."""
    try:
        return fn(*args)
    except Terminated as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 128 + signal.SIGTERM)


class Engine:
    """Runs tasks on ``kind`` ('local' or 'ray') with at most ``workers`` at once; a context manager."""

    def __init__(self, kind: str = 'local', workers: Optional[int] = None, address: Optional[str] = None) -> None:
        if kind not in ENGINES:
            raise ValueError(f'engine must be one of {ENGINES}, got {kind!r}')
        if workers is not None and workers < 1:
            raise ValueError(f'workers must be >= 1, got {workers}')
        if address is not None and kind != 'ray':
            raise ValueError('--address needs --engine ray')
        self.kind, self.workers, self.address = kind, workers, address
        self._pool: Optional[ProcessPoolExecutor] = None
        self._ray: Any = None
        self._owns_ray = False
        if kind == 'ray':
            try:
                import ray
            except ImportError as error:
                raise UserError(f'--engine ray needs Ray, which is not installed: {RAY_INSTALL}') from error
            if not ray.is_initialized():  # else: join the session the caller started
                ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
                self._owns_ray = True
            self._ray = ray
            self.workers = workers or int(ray.cluster_resources().get('CPU', 1))
        else:
            self.workers = workers or os.cpu_count() or 1

    def __enter__(self) -> 'Engine':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(interrupt=exc[0] is not None)

    def close(self, interrupt: bool = False) -> None:
        """Stop the pool's workers / the Ray session this engine started; ``interrupt``: SIGTERM the workers
        first, so running tasks stop (and kill their ffmpeg) instead of being waited for."""
        if self._pool is not None:
            if interrupt:
                for process in list(self._pool._processes.values()):
                    process.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

    def map(self, fn: Callable, tasks: Sequence[tuple], desc: str = '', unit: str = 'task',
            weights: Optional[Sequence[int]] = None, progress: bool = True) -> List[Any]:
        """``[fn(*t) for t in tasks]``, run on the engine, with a progress bar counting ``weights`` per task."""
        weights = list(weights) if weights is not None else [1] * len(tasks)
        results: List[Any] = [None] * len(tasks)
        with tqdm(total=sum(weights), desc=desc, unit=unit, disable=not progress) as bar:
            if self.kind == 'local' and self.workers == 1:
                for i, task in enumerate(tasks):
                    results[i] = fn(*task)
                    bar.update(weights[i])
            elif self.kind == 'local':
                self._map_pool(fn, tasks, results, lambda i: bar.update(weights[i]))
            else:
                self._map_ray(fn, tasks, results, lambda i: bar.update(weights[i]))
        return results

    def _map_pool(self, fn: Callable, tasks: Sequence[tuple], results: list, done: Callable[[int], None]) -> None:
        remaining = dict(enumerate(tasks))
        for attempt in range(TASK_RETRIES + 1):
            if self._pool is None:  # spawn: a forked copy of a process that already ran torch can hang in OpenMP
                self._pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context('spawn'),
                                                 initializer=stop_with_parent, initargs=(os.getpid(),))
            futures = {self._pool.submit(run_in_worker, fn, *task): i for i, task in remaining.items()}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()  # re-raises a task's error with its message
                    done(i)
                    del remaining[i]
                return
            except BrokenProcessPool:  # a worker died (killed, out of memory): retry what is unfinished
                if attempt == TASK_RETRIES:
                    raise
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            finally:
                for future in futures:
                    future.cancel()

    def _map_ray(self, fn: Callable, tasks: Sequence[tuple], results: list, done: Callable[[int], None]) -> None:
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(fn)
        window = self.workers  # tasks submitted and unfinished: `workers` at once, not millions pending
        refs: dict = {}
        todo = iter(enumerate(tasks))
        try:
            while True:
                for i, task in todo:
                    refs[remote.remote(*task)] = i
                    if len(refs) >= window:
                        break
                if not refs:
                    return
                finished, _ = ray.wait(list(refs), num_returns=1)
                for ref in finished:
                    i = refs.pop(ref)
                    try:
                        results[i] = ray.get(ref)
                    except ray.exceptions.RayTaskError as error:
                        raise error.as_instanceof_cause() from None  # the task's own exception and message
                    done(i)
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
