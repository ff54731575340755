"""The fixes without which mmengine / mmcv / mmdet / mmseg do not run on today's torch at all.

One module per upstream problem, each naming the versions it is for and turning itself off
where upstream no longer needs it; :func:`apply` (called by ``import convnext_dense``) applies
them once. Everything else we add is a registered component that a config selects.

- :mod:`.safe_checkpoint`: our weights-only loader (:mod:`convnext_dense.checkpoint.io`)
  registered for mmengine's checkpoint schemes.
- :mod:`.package_lookup`: mmengine's package lookup without ``pkg_resources``.
- :mod:`.mmcv_cuda_ops`: mmcv's RoIAlign, NMS, MultiScaleDeformableAttention and sigmoid focal
  loss on CUDA tensors when mmcv has no CUDA kernels.
"""
import functools

from . import mmcv_cuda_ops, package_lookup, safe_checkpoint
from ..checkpoint.io import (TRUST_ENV, DamagedCheckpointError,  # noqa: F401  (public names)
                             UnsafeCheckpointError, load_checkpoint)
from .package_lookup import get_installed_path, is_installed, package_to_module  # noqa: F401


@functools.lru_cache(maxsize=None)
def apply() -> None:
    """Apply every fix once (idempotent)."""
    safe_checkpoint.apply()
    package_lookup.apply()
    mmcv_cuda_ops.apply()
