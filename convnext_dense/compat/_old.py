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

Package lookup without pkg_resources
------------------------------------
mmengine's ``is_installed`` / ``get_installed_path`` / ``package2module`` (used when a config
names a base as ``mmdet::...``) import ``pkg_resources``, which setuptools >= 82 no longer ships
and which older ones deprecate (and reload, slowly, on every call). We replace them with
``importlib.metadata`` equivalents.

Checkpoints survive interruption
--------------------------------
mmengine writes a checkpoint straight into its final path, so a run killed while saving leaves
a truncated ``epoch_N.pth`` that ``last_checkpoint`` may name. Local writes now go to a temporary
file that is fsync'ed and then renamed, and ``find_latest_checkpoint`` falls back to the newest
complete checkpoint when ``last_checkpoint`` is missing, empty or names a missing file.

Distributed runs on machines without GPU
----------------------------------------
mmengine's ``pytorch`` launcher (``torchrun`` + ``--launcher pytorch``) always calls
``torch.cuda.set_device(LOCAL_RANK)``, which raises "Found no NVIDIA driver" on a CPU-only
machine, and its Runner wraps the model in DistributedDataParallel with
``device_ids=[LOCAL_RANK]``, which DDP refuses for a model on the CPU. Without any accelerator
:func:`_init_dist_pytorch_cpu` initialises the process group without ``set_device`` (with
``gloo`` when the config asks for ``nccl``), and DDP gets ``device_ids=None`` for CPU models.
"""
import functools
import importlib.metadata
import importlib.util
import os
import os.path as osp
import pickle
import re
import tempfile
import warnings
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch

TRUST_ENV = 'CONVNEXT_DENSE_TRUST_CHECKPOINTS'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds globals outside the weights-only allow-list."""


_HISTORY_STATISTICS = {'min', 'max', 'mean', 'current'}  # registered lazily by mmengine


def _history_buffer_getattr(obj, name: str):
    """Stand-in for ``builtins.getattr`` inside checkpoints: only HistoryBuffer statistics."""
    from mmengine.logging import HistoryBuffer
    allowed = _HISTORY_STATISTICS | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and isinstance(name, str) and name in allowed:
        return getattr(HistoryBuffer, name)
    raise UnsafeCheckpointError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics '
        f'({", ".join(sorted(allowed))}) may be read while loading.')


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


def _unpickler_reason(error: Exception) -> str:
    """The specific reason inside torch's long weights-only error message."""
    text = str(error)
    marker = 'WeightsUnpickler error:'
    if marker in text:
        text = text.split(marker, 1)[1].strip().split('\n\n')[0]
    return 'a forbidden construct (' + text.strip().splitlines()[0] + ')'


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's loader for local files, weights-only unless the user opted in."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist; check the path given as '
                                f'load_from, --resume, init_cfg checkpoint or to tools/test.py')
    if os.environ.get(TRUST_ENV, '0').lower() in ('1', 'true', 'yes'):
        warnings.warn(f'{TRUST_ENV} is set: loading {filename} with full pickle, which can run '
                      f'code from the file.')
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        names = _unsafe_globals(filename)
        what = ', '.join(names) if names else _unpickler_reason(error)
        raise UnsafeCheckpointError(
            f'Refusing to load checkpoint {filename}: it contains {what}, which a weights-only '
            f'load does not allow (loading it could run code from the file). If you trust this '
            f'file, set the environment variable {TRUST_ENV}=1 to load it with full pickle.'
        ) from error


def _patch_checkpoint_loading() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader
    torch.serialization.add_safe_globals(safe_checkpoint_globals())
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)


def package_to_module(package: str) -> str:
    """Top-level module of an installed distribution (``mmcv-full`` -> ``mmcv``)."""
    dist = importlib.metadata.distribution(package)
    top_level = (dist.read_text('top_level.txt') or '').split()
    if top_level:
        return top_level[0]
    raise ValueError(f'can not infer the module name of {package}')


def is_installed(package: str) -> bool:
    """Whether ``package`` is an installed distribution or an importable module."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def get_installed_path(package: str) -> str:
    """Directory of the installed package ``package`` (editable installs included)."""
    try:
        module = package_to_module(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        module = package
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise importlib.metadata.PackageNotFoundError(package)
    if spec.origin is None:
        raise RuntimeError(f'{package} is a namespace package, which is invalid for '
                           f'`get_install_path`')
    return osp.dirname(spec.origin)


def _patch_package_lookup() -> None:
    import mmengine.config.config as config_module
    import mmengine.hub.hub as hub_module
    import mmengine.utils as utils_module
    import mmengine.utils.package_utils as package_utils
    replacements = dict(is_installed=is_installed, get_installed_path=get_installed_path,
                        package2module=package_to_module)
    for module in (package_utils, utils_module, config_module, hub_module):
        for name, function in replacements.items():
            if hasattr(module, name):
                setattr(module, name, function)


def _new_file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(data: Union[bytes, str], filepath: str, encoding: str = 'utf-8') -> None:
    """Write ``data`` to ``filepath`` through a temporary file in the same folder + rename, so
    readers see either the old file or the complete new one, never a partial one."""
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


_CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def find_latest_checkpoint(path: str) -> Optional[str]:
    """The checkpoint named by ``path/last_checkpoint`` if it exists, else the newest
    ``epoch_N.pth`` / ``iter_N.pth`` in ``path`` (highest N), else None."""
    save_file = osp.join(path, 'last_checkpoint')
    if osp.isfile(save_file):
        with open(save_file) as f:
            named = f.read().strip()
        if named and osp.isfile(named):
            return named
    candidates = []
    for name in os.listdir(path) if osp.isdir(path) else []:
        match = _CHECKPOINT_NAME.match(name)
        if match:
            candidates.append((int(match.group(2)), osp.getmtime(osp.join(path, name)), name))
    return osp.join(path, max(candidates)[2]) if candidates else None


def _patch_checkpoint_saving() -> None:
    import mmengine.runner.checkpoint as checkpoint_module
    import mmengine.runner.runner as runner_module
    from mmengine.fileio.backends.local_backend import LocalBackend

    LocalBackend.put = lambda self, obj, filepath: write_atomically(obj, str(filepath))
    LocalBackend.put_text = (lambda self, obj, filepath, encoding='utf-8':
                             write_atomically(obj, str(filepath), encoding))
    for module in (checkpoint_module, runner_module):
        module.find_latest_checkpoint = find_latest_checkpoint


# ----------------------------------------------------------------------------- CPU-only DDP
def _accelerator_available() -> bool:
    from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                                 is_npu_available)
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def _init_dist_pytorch_cpu(original: Callable) -> Callable:
    """mmengine's ``_init_dist_pytorch`` that also works without any accelerator."""

    @functools.wraps(original)
    def _init_dist_pytorch(backend, init_backend='torch', **kwargs):
        if _accelerator_available():
            return original(backend, init_backend=init_backend, **kwargs)
        if init_backend != 'torch':
            raise RuntimeError(f'init_backend={init_backend!r} needs GPUs; on a machine without '
                               f"GPU use init_backend='torch' with the gloo backend.")
        if backend == 'nccl':
            warnings.warn("No GPU is available: initialising torch.distributed with the 'gloo' "
                          "backend instead of 'nccl' (env_cfg.dist_cfg.backend).")
            backend = 'gloo'
        torch.distributed.init_process_group(backend=backend, **kwargs)

    _init_dist_pytorch.__convnext_dense_patched__ = True
    return _init_dist_pytorch


def _patch_cpu_distributed() -> None:
    import mmengine.dist.utils as dist_utils
    from mmengine.model.wrappers import MMDistributedDataParallel
    if not getattr(dist_utils._init_dist_pytorch, '__convnext_dense_patched__', False):
        dist_utils._init_dist_pytorch = _init_dist_pytorch_cpu(dist_utils._init_dist_pytorch)

    original_init = MMDistributedDataParallel.__init__
    if getattr(original_init, '__convnext_dense_patched__', False):
        return

    @functools.wraps(original_init)
    def __init__(self, module, *args, **kwargs):
        if kwargs.get('device_ids') is not None and all(
                p.device.type == 'cpu' for p in module.parameters()):
            kwargs['device_ids'] = None  # DDP takes no device ids for a CPU module
        original_init(self, module, *args, **kwargs)

    __init__.__convnext_dense_patched__ = True
    MMDistributedDataParallel.__init__ = __init__


@functools.lru_cache(maxsize=None)
def apply() -> None:
    """Apply every patch once (idempotent)."""
    _patch_checkpoint_loading()
    _patch_package_lookup()
    _patch_checkpoint_saving()
    _patch_cpu_distributed()
