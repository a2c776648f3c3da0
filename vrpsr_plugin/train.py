"""Train with BasicSR's building blocks and this plugin's registries.

    python vrpsr_plugin/train.py -opt options/vrpsr_realesrgan.yml [--auto_resume] [--debug]
    python -m vrpsr_plugin.train -opt options/smoke/train_simulator.yml

experiments/ and tb_logger/ go under the repository root (as in Real-ESRGAN), or under $VRPSR_ROOT when set; there,
relative ``path.pretrain_network_*`` / ``path.resume_state`` entries also resolve against it.

The loop is basicsr 1.4.2's ``train_pipeline`` made exact and tidy:

- Resume is exact from any saved iteration: the position in the epoch is ``iter % batches_per_epoch`` (the
  sampler skips the samples already trained on and the epoch counter is ``iter // batches_per_epoch``), the
  RNG states come back from the ``.state`` file (:mod:`vrpsr_plugin.basicsr_fixes`), each epoch's DataLoader
  seeds its workers from ``(manual_seed, epoch)`` instead of the global RNG, and validation leaves the training
  RNG untouched. Networks (EMA, discriminator, simulator), optimisers and schedulers resume as in basicsr.
- Nothing is created on disk before the datasets and the model are built, so a failed start leaves no empty
  ``experiments/<name>`` or ``tb_logger/<name>``; user errors print one ``error:`` line (status 2; ``--debug``
  shows the traceback) and SIGTERM unwinds, DataLoader workers included (:mod:`vrpsr_plugin.commands`).
- The last iteration is validated once (basicsr validates again after saving ``net_g_latest``).
- Under DDP the ranks wait for each other at the end (rank 0 alone writes the checkpoints) and close the process
  group, so no rank exits while another still works.
"""
import functools
import itertools
import logging
import os
import os.path as osp
import sys
import time
from logging.handlers import MemoryHandler
from typing import Any, Callable, Dict, Iterator, Optional

if __package__ in (None, ''):  # run as a script: put the repository root, not this folder, on sys.path
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

from vrpsr_plugin.commands import run_command, stop_with_parent  # noqa: E402

BASICSR_LOG_FORMAT = '%(asctime)s %(levelname)s: %(message)s'


def root_path() -> str:
    """$VRPSR_ROOT, else the repository root."""
    return os.environ.get('VRPSR_ROOT') or osp.abspath(osp.join(__file__, osp.pardir, osp.pardir))


class SkipFirstSampler:
    """Wraps the training sampler: the first ``skip`` indices of the next epoch are dropped (those already
    trained on before a resume); ``set_epoch`` is forwarded."""

    def __init__(self, sampler: Any) -> None:
        self.sampler, self.skip = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


def _init_worker(basicsr_init: Optional[Callable[[int], None]], parent: int, worker_id: int) -> None:
    """DataLoader worker: stops with the training process and unwinds on SIGTERM (torch's own handler exits at
    once, which would leave its ffmpeg running), then basicsr's seeding."""
    stop_with_parent(parent)
    if basicsr_init is not None:
        basicsr_init(worker_id)


def _epoch_generator(seed: int, epoch: int):
    """The DataLoader's generator for ``epoch``: worker seeds from (seed, epoch), never from the global RNG."""
    import numpy as np
    import torch
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def train_pipeline(root: str) -> None:
    """Parse options, build data and model, then train (see the module docstring)."""
    import vrpsr_plugin  # noqa: F401  (registers archs, datasets, losses, models, metrics)
    from basicsr.utils import get_root_logger
    from vrpsr_plugin import basicsr_fixes

    basicsr_fixes.apply()
    opt, args = basicsr_fixes.parse_options(root, is_train=True)
    opt['root_path'] = root
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO)
    buffer = MemoryHandler(capacity=100000, flushLevel=logging.CRITICAL + 1)  # held until the log file exists
    if opt['rank'] == 0:
        logger.setLevel(logging.INFO)
        logger.addHandler(buffer)
    try:
        _train(opt, args, logger, buffer)
    finally:
        logger.removeHandler(buffer)


def _train(opt: Dict[str, Any], args: Any, logger: logging.Logger, buffer: MemoryHandler) -> None:
    from basicsr.data import build_dataloader
    from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
    from basicsr.models import build_model
    from basicsr.train import create_train_val_dataloader, init_tb_loggers
    from basicsr.utils import AvgTimer, MessageLogger, get_env_info, get_time_str, make_exp_dirs, mkdir_and_rename
    from basicsr.utils.options import copy_opt_file, dict2str
    from vrpsr_plugin import basicsr_fixes

    root = opt['root_path']
    resume_state = basicsr_fixes.load_resume_state(opt)
    train_loader, train_sampler, val_loaders, _, total_iters = create_train_val_dataloader(opt, logger)
    train_opt = opt['datasets']['train']
    sampler = SkipFirstSampler(train_sampler)
    train_loader = build_dataloader(train_loader.dataset, train_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                    sampler=sampler, seed=opt['manual_seed'])
    train_loader.worker_init_fn = functools.partial(_init_worker, train_loader.worker_init_fn, os.getpid())
    per_epoch = len(train_loader)
    if per_epoch == 0:
        raise ValueError(f'the training set ({len(train_loader.dataset)} samples x dataset_enlarge_ratio) gives no '
                         f'full batch of batch_size_per_gpu={train_opt["batch_size_per_gpu"]}')
    model = build_model(opt)
    current_iter = 0
    if resume_state:
        model.resume_training(resume_state)  # optimisers and schedulers; networks were loaded by build_model
        current_iter = resume_state['iter']
        if 'rng' in resume_state:
            basicsr_fixes.set_rng_state(resume_state['rng'])
        else:
            logger.warning(f'{opt["path"]["resume_state"]} holds no RNG state (written by basicsr): the resumed '
                           'run is not bit-exact')
        logger.info(f"Resuming training from epoch: {current_iter // per_epoch}, iter: {current_iter}.")

    # the start succeeded: now create the experiment's folders and log file
    if resume_state is None:
        make_exp_dirs(opt)
        if opt['logger'].get('use_tb_logger') and 'debug' not in opt['name'] and opt['rank'] == 0:
            mkdir_and_rename(osp.join(root, 'tb_logger', opt['name']))
    copy_opt_file(args.opt, opt['path']['experiments_root'])
    if opt['rank'] == 0:
        log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
        file_handler = logging.FileHandler(log_file, 'w')
        file_handler.setFormatter(logging.Formatter(BASICSR_LOG_FORMAT))
        buffer.setTarget(file_handler)
        buffer.flush()  # the buffered start-up lines go first into the file
        logger.removeHandler(buffer)
        logger.addHandler(file_handler)
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    tb_logger = init_tb_loggers(opt)
    msg_logger = MessageLogger(opt, current_iter, tb_logger)
    prefetch_mode = train_opt.get('prefetch_mode')
    if prefetch_mode not in (None, 'cpu', 'cuda'):
        raise ValueError(f"prefetch_mode must be ~, 'cpu' or 'cuda', got {prefetch_mode!r}")
    if prefetch_mode == 'cuda' and train_opt.get('pin_memory') is not True:
        raise ValueError('prefetch_mode cuda needs pin_memory: true')

    logger.info(f'Start training from epoch: {current_iter // per_epoch}, iter: {current_iter}')
    val_opt = opt.get('val')
    validated_at = None

    def validate() -> None:
        with basicsr_fixes.preserved_rng():
            for val_loader in val_loaders:
                model.validation(val_loader, current_iter, tb_logger, val_opt['save_img'])

    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    while current_iter < total_iters:
        epoch, done = divmod(current_iter, per_epoch)
        sampler.skip = done * train_loader.batch_size
        sampler.set_epoch(epoch)
        train_loader.generator = _epoch_generator(opt['manual_seed'], epoch)
        # a prefetcher starts its epoch's iterator (and workers) when built; basicsr's reset() started a second one
        prefetcher = CUDAPrefetcher(train_loader, opt) if prefetch_mode == 'cuda' else CPUPrefetcher(train_loader)
        train_data = prefetcher.next()
        while train_data is not None:
            data_timer.record()
            current_iter += 1
            model.update_learning_rate(current_iter, warmup_iter=opt['train'].get('warmup_iter', -1))
            model.feed_data(train_data)
            model.optimize_parameters(current_iter)
            iter_timer.record()
            if current_iter % opt['logger']['print_freq'] == 0:
                msg_logger({'epoch': epoch, 'iter': current_iter, 'lrs': model.get_current_learning_rate(),
                            'time': iter_timer.get_avg_time(), 'data_time': data_timer.get_avg_time(),
                            **model.get_current_log()})
            if current_iter % opt['logger']['save_checkpoint_freq'] == 0:
                logger.info('Saving models and training states.')
                model.save(epoch, current_iter)
            if val_opt is not None and current_iter % val_opt['val_freq'] == 0:
                validate()
                validated_at = current_iter
            if current_iter >= total_iters:
                break
            data_timer.start()
            iter_timer.start()
            train_data = prefetcher.next()

    logger.info(f'End of training. Time consumed: {int(time.time() - start_time)} s')
    logger.info('Save the latest model.')
    model.save(epoch=-1, current_iter=-1)  # -1: net_g_latest.pth
    if val_opt is not None and validated_at != current_iter:
        validate()
    if tb_logger:
        tb_logger.close()
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():  # ranks leave together: only rank 0 writes checkpoints
        dist.barrier()
        dist.destroy_process_group()


def main() -> int:
    return run_command('train.py', lambda: train_pipeline(root_path()) or 0, debug='--debug' in sys.argv)


if __name__ == '__main__':
    sys.exit(main())
