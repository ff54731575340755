"""The one place that makes mmengine / mmcv / mmdet / mmseg work on today's torch and NumPy.

Applied once by ``import convnext_dense`` (:func:`apply`). Each patch is small, named, and has a
test in ``tests/test_compat.py`` that fails without it.

Checkpoint safety
-----------------
Since torch 2.6 ``torch.load`` defaults to ``weights_only=True`` and mmengine 0.10.7 does not
pass ``weights_only``, so every checkpoint mmengine's Runner writes fails to load (its
MessageHub pickles ``HistoryBuffer`` objects, NumPy values and ``getattr(HistoryBuffer, 'min')``
calls). Rather than switching the check off we allow-list exactly those globals; ``getattr`` is
allowed only through :func:`_history_buffer_getattr`, which reads nothing but HistoryBuffer's
registered statistics. A file with any other global is refused by
:func:`load_local_checkpoint` with :class:`UnsafeCheckpointError`, which names the globals. A
user who trusts such a file sets ``CONVNEXT_DENSE_TRUST_CHECKPOINTS=1`` (off by default).
"""
import functools
import os
import pickle
import warnings
from typing import Callable, List, Tuple, Union

import numpy as np
import torch

TRUST_ENV = 'CONVNEXT_DENSE_TRUST_CHECKPOINTS'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds globals outside the weights-only allow-list."""


def _history_buffer_getattr(obj, name: str):
    """Stand-in for ``builtins.getattr`` inside checkpoints: only HistoryBuffer statistics."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and name in HistoryBuffer._statistics_methods:
        return getattr(HistoryBuffer, name)
    raise UnsafeCheckpointError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics '
        f'({", ".join(sorted(HistoryBuffer._statistics_methods))}) may be read while loading.')


def safe_checkpoint_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """The globals a checkpoint written by mmengine's Runner may contain, beyond torch's own."""
    from mmengine.logging import HistoryBuffer
    try:
        from numpy._core.multiarray import _reconstruct, scalar  # NumPy 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct, scalar  # NumPy 1
    entries: List[Union[Callable, Tuple[Callable, str]]] = [
        HistoryBuffer, np.ndarray, np.dtype, (_history_buffer_getattr, 'builtins.getattr')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries += [(_reconstruct, f'{module}._reconstruct'), (scalar, f'{module}.scalar')]
    # NumPy >= 1.25 pickles dtypes through their classes (numpy.dtypes.Float64DType, ...).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        entries += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')]
    return entries


def _unsafe_globals(filename: str) -> List[str]:
    allowed = set(torch._weights_only_unpickler._get_allowed_globals())
    allowed |= set(torch._weights_only_unpickler._get_user_allowed_globals())
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except Exception:  # not a zip checkpoint: the unpickler's message is all we have
        return []
    return sorted(name for name in found if name not in allowed)


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's loader for local files, weights-only unless the user opted in."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    if os.environ.get(TRUST_ENV, '0').lower() in ('1', 'true', 'yes'):
        warnings.warn(f'{TRUST_ENV} is set: loading {filename} with full pickle, which can run '
                      f'code from the file.')
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        names = _unsafe_globals(filename)
        what = ', '.join(names) if names else str(error).splitlines()[0]
        raise UnsafeCheckpointError(
            f'Refusing to load checkpoint {filename}: it contains {what}, which a weights-only '
            f'load does not allow (loading it could run code from the file). If you trust this '
            f'file, set the environment variable {TRUST_ENV}=1 to load it with full pickle.'
        ) from error


def _patch_checkpoint_loading() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader
    torch.serialization.add_safe_globals(safe_checkpoint_globals())
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)


@functools.lru_cache(maxsize=None)
def apply() -> None:
    """Apply every patch once (idempotent)."""
    _patch_checkpoint_loading()
