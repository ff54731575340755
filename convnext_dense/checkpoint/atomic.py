"""Checkpoints that survive interruption: atomic writes and the newest complete checkpoint.

mmengine 0.10.x writes a checkpoint straight into its final path, so a run killed while saving
leaves a truncated ``iter_N.pth`` (and ``last_checkpoint`` may name it). Here, chosen by a
config, never process-wide:

- :class:`AtomicLocalBackend`, the mmengine file backend ``'convnext_dense.atomic_local'``
  (``backend_args=dict(backend='convnext_dense.atomic_local')``): local files written through a
  temporary file in the same folder, fsync'ed, then renamed (:func:`write_atomically`);
- :class:`AtomicCheckpointHook` (``default_hooks.checkpoint=dict(
  type='convnext_dense.AtomicCheckpointHook', ...)``): mmengine's CheckpointHook saving through
  that backend;
- :func:`save_atomically`: ``torch.save`` to a file, atomically (tools/convert_checkpoint.py);
- :func:`find_latest_checkpoint`: what ``tools/train.py --resume`` continues from.
"""
import io
import os
import os.path as osp
import re
import tempfile
import warnings
from typing import Optional, Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook

from ..registry import HOOKS

ATOMIC_BACKEND = 'convnext_dense.atomic_local'


def _new_file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(data: Union[bytes, str], filepath: str, encoding: str = 'utf-8') -> None:
    """Write ``data`` to ``filepath`` through a temporary file in the same folder + rename, so
    readers see either the old file or the complete new one, never a partial one.

    Args:
        data (bytes | str): what to write.
        filepath (str): the destination.
        encoding (str): for ``str`` data.
    """
    folder = osp.dirname(osp.abspath(filepath))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix='.' + osp.basename(filepath), suffix='.tmp')
    try:
        os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600; give what open() would
        with os.fdopen(handle, 'wb') as f:
            f.write(data.encode(encoding) if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` / ``put_text`` write atomically."""

    def put(self, obj: bytes, filepath) -> None:
        write_atomically(obj, str(filepath))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        write_atomically(obj, str(filepath), encoding)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)  # a new name: nothing replaced


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) that writes local checkpoints atomically.

    Unless ``backend_args`` / ``file_client_args`` or a remote ``out_dir`` are given, it saves
    through :class:`AtomicLocalBackend`: an interrupted save leaves the previous checkpoints
    intact and at most a hidden ``.<name>.pth*.tmp`` file. (mmengine still writes the small
    ``last_checkpoint`` pointer in place; :func:`find_latest_checkpoint` copes with a broken
    one.)
    """

    def __init__(self, *args, backend_args: Optional[dict] = None,
                 file_client_args: Optional[dict] = None, out_dir=None, **kwargs) -> None:
        if backend_args is None and file_client_args is None and '://' not in str(out_dir):
            backend_args = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, backend_args=backend_args, file_client_args=file_client_args,
                         out_dir=out_dir, **kwargs)


def save_atomically(obj, filepath: str) -> None:
    """``torch.save(obj, filepath)`` through :func:`write_atomically`.

    Args:
        obj (Any): what to save.
        filepath (str): the destination.
    """
    import torch
    with io.BytesIO() as buffer:
        torch.save(obj, buffer)
        write_atomically(buffer.getvalue(), filepath)


_CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def find_latest_checkpoint(path: str) -> Optional[str]:
    """The checkpoint named by ``path/last_checkpoint`` if that file exists, else the newest
    ``epoch_N.pth`` / ``iter_N.pth`` in ``path`` (highest N, then newest), else None.

    Unlike mmengine's function of that name, a pointer that is empty (killed while writing it),
    names a missing file, or names a file outside ``path`` (a work dir copied from elsewhere
    keeps the original's absolute path) falls back to the files present in ``path``.

    Args:
        path (str): the work dir.

    Returns:
        str | None: the checkpoint's path, or None when there is none.
    """
    save_file = osp.join(path, 'last_checkpoint')
    if osp.isfile(save_file):
        with open(save_file) as f:
            named = f.read(4096).strip()
        inside = osp.realpath(osp.join(path, named)).startswith(osp.realpath(path) + os.sep)
        if named and inside and osp.isfile(osp.join(path, named)):
            return osp.join(path, named)
        if named and not inside:
            warnings.warn(f'{save_file} names {named}, which is outside {path}; resuming from '
                          f'the newest checkpoint in {path} instead.')
    candidates = []
    for name in os.listdir(path) if osp.isdir(path) else []:
        match = _CHECKPOINT_NAME.match(name)
        if match:
            candidates.append((int(match.group(2)), osp.getmtime(osp.join(path, name)), name))
    return osp.join(path, max(candidates)[2]) if candidates else None
