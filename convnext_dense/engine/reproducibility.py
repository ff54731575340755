"""Reproducible runs: the library versions and git revision a run used, the random states
of every rank saved with each checkpoint, and :class:`ReproducibilityHook`, which records
them and restores them on ``--resume`` so that the resumed run continues bit for bit."""
import functools
import glob
import json
import os.path as osp
import random
import subprocess
import sys
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from mmengine.hooks import Hook

from ..registry import HOOKS


def library_versions() -> Dict[str, Optional[str]]:
    """Versions of everything that decides the numbers of a run.

    Returns:
        dict[str, str | None]: package -> version (None: not installed), and the
        convnext_dense git revision.
    """
    import importlib.metadata
    import platform

    import numpy
    import torch

    import convnext_dense
    versions: Dict[str, Optional[str]] = dict(
        python=platform.python_version(), torch=str(torch.__version__),  # not TorchVersion:
        numpy=str(numpy.__version__), convnext_dense=str(convnext_dense.__version__),  # plain
        convnext_dense_git=_git_revision())  # str loads weights-only
    for package in ('mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'torchvision', 'timm'):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions['mmseg'] = versions.pop('mmsegmentation')
    return versions


@functools.lru_cache(maxsize=None)
def _git_revision() -> Optional[str]:
    """``<commit>[-dirty]`` of the checkout convnext_dense is imported from, if it is one."""
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    if not osp.exists(osp.join(root, '.git')):
        return None
    try:
        commit = subprocess.run(['git', '-C', root, 'rev-parse', 'HEAD'], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(['git', '-C', root, 'status', '--porcelain',
                                '--untracked-files=no'], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ('-dirty' if dirty else '')) if commit else None


def get_rng_state() -> dict:
    """The global random states (Python, NumPy, torch CPU and CUDA) in a form that a
    weights-only ``torch.load`` reads back (ints, tuples, tensors).

    Returns:
        dict: ``python``, ``numpy``, ``torch`` and, where CUDA is initialised, ``cuda``.
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(python=random.getstate(),
                 numpy=(name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                        int(has_gauss), float(gauss)),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`.

    Args:
        state (dict): what :func:`get_rng_state` returned.
    """
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class _RestoreAfter:
    """Iterator proxy: delegates to ``iterator``; just before item ``skip + 1`` is fetched it
    calls ``restore`` once. IterBasedTrainLoop's resume fetches (and drops) the ``skip`` batches
    already trained on, which replays the sampler and the data workers exactly; the global
    random state is put back only after that replay."""

    def __init__(self, iterator, skip: int, restore: Callable[[], None]):
        self._iterator, self._skip, self._restore = iterator, skip, restore

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip == 0 and self._restore is not None:
            self._restore()
            self._restore = None
        self._skip -= 1
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class ReproducibilityHook(Hook):
    """Record what a run depends on and make ``--resume`` continue bit for bit.

    - ``before_run``: writes ``<work_dir>/<timestamp>/run_info.json`` (seed, randomness
      settings, library versions and the convnext_dense git commit, config file, command line,
      world size) next to mmengine's log and config dump, and logs the versions.
    - every checkpoint gets ``meta['versions']`` and ``meta['randomness']`` (mmengine already
      stores ``meta['seed']`` and the config text in ``meta['cfg']``) and ``rng_state``: the
      Python / NumPy / torch random states of every rank at the moment of saving.
    - on ``--resume`` those states are restored at the point where the uninterrupted run would
      have drawn its next random number: before the first batch of the next epoch
      (EpochBasedTrainLoop) or right after IterBasedTrainLoop has replayed the batches it
      skips. With ``randomness=dict(seed=..., deterministic=True)`` the resumed run then
      gives the same losses as a run that was never interrupted.

    Limits: data workers keep their own random streams; they are reproduced exactly when
    ``num_workers=0``, for iteration-based loops (the skipped batches are replayed through the
    same workers) and for epoch-based loops without ``persistent_workers`` (mmengine seeds the
    workers anew each epoch), but not for epoch-based loops with persistent workers.
    """

    priority = 'LOW'  # after the logger, before CheckpointHook (VERY_LOW) saves

    def __init__(self) -> None:
        self._gathered: Optional[List[dict]] = None
        self._pending: Optional[dict] = None

    # -------------------------------------------------------------- run info
    def before_run(self, runner) -> None:
        from mmengine.dist import is_main_process
        versions = library_versions()
        runner.logger.info('Versions: ' + ', '.join(f'{k} {v}' for k, v in versions.items()))
        if not is_main_process():
            return
        cfg = runner.cfg
        info = dict(
            seed=runner.seed,
            randomness=_plain(getattr(runner, '_randomness_cfg', {})),
            versions=versions,
            config=getattr(cfg, 'filename', None),
            config_dump=osp.join(runner.log_dir, 'vis_data', 'config.py'),
            command=[sys.executable] + sys.argv,
            world_size=runner.world_size,
            launcher=runner.launcher,
            work_dir=osp.abspath(runner.work_dir),
            load_from=cfg.get('load_from'),
            resume=bool(cfg.get('resume')),
            timestamp=runner.timestamp)
        from ..checkpoint.atomic import write_atomically
        write_atomically(json.dumps(info, indent=2, default=str),
                         osp.join(runner.log_dir, 'run_info.json'))
        leftovers = sorted(glob.glob(osp.join(glob.escape(runner.work_dir), '.*.pth*.tmp')))
        if leftovers:
            runner.logger.warning(
                'Partial checkpoint file(s) from an interrupted save (never used, safe to '
                'delete): ' + ', '.join(leftovers))

    # -------------------------------------------------------------- saving
    def _checkpoint_hook(self, runner):
        from mmengine.hooks import CheckpointHook
        return next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)

    def _gather(self, runner) -> None:
        from mmengine.dist import all_gather_object
        self._gathered = all_gather_object(get_rng_state())

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        hook = self._checkpoint_hook(runner)
        if runner.world_size > 1 and hook is not None and not hook.by_epoch and (
                hook.every_n_train_iters(runner, hook.interval, hook.save_begin)
                or (hook.save_last and hook.is_last_train_iter(runner))):
            self._gather(runner)  # every rank takes part; only rank 0 then saves

    def after_train_epoch(self, runner) -> None:
        hook = self._checkpoint_hook(runner)
        if runner.world_size > 1 and hook is not None and hook.by_epoch and (
                hook.every_n_epochs(runner, hook.interval, hook.save_begin)
                or (hook.save_last and hook.is_last_train_epoch(runner))):
            self._gather(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        meta['versions'] = library_versions()
        meta['randomness'] = _plain(getattr(runner, '_randomness_cfg', {}))
        states = self._gathered if runner.world_size > 1 else [get_rng_state()]
        self._gathered = None
        if states is not None:
            checkpoint['rng_state'] = dict(world_size=runner.world_size, ranks=states)

    # -------------------------------------------------------------- resuming
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return  # load_from: fine-tuning starts its own random streams
        saved = (checkpoint.get('meta') or {}).get('versions')
        if saved:
            now = library_versions()
            changed = [f'{k} {saved.get(k)} -> {now.get(k)}' for k in now
                       if k != 'convnext_dense_git' and saved.get(k) != now.get(k)]
            if changed:
                runner.logger.warning('Resuming a checkpoint written with other library '
                                      'versions (losses may differ): ' + ', '.join(changed))
        state = checkpoint.get('rng_state')
        if not state:
            runner.logger.info('The checkpoint holds no random state (written without '
                               'ReproducibilityHook): random draws after the resume differ '
                               'from an uninterrupted run.')
        elif state.get('world_size') != runner.world_size:
            runner.logger.warning(
                f'The checkpoint holds the random states of {state.get("world_size")} '
                f'process(es), this run has {runner.world_size}: not restoring them.')
        else:
            self._pending = state['ranks'][runner.rank]

    def before_train_epoch(self, runner) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        loop = runner.train_loop
        if hasattr(loop, 'dataloader_iterator') and loop.iter > 0:  # IterBasedTrainLoop
            loop.dataloader_iterator = _RestoreAfter(loop.dataloader_iterator, loop.iter,
                                                     functools.partial(set_rng_state, state))
        else:
            if loop.iter != loop.epoch * len(loop.dataloader):
                runner.logger.warning(
                    'Resuming an epoch-based loop from a checkpoint saved inside an epoch: '
                    'mmengine restarts that epoch from its first batch.')
            set_rng_state(state)


def _plain(value):
    """Config dicts to plain dicts (for JSON and for weights-only checkpoint loading)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
