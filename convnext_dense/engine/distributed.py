"""Distributed data-parallel runs on machines without any accelerator (CPU processes, gloo).

mmengine 0.10.x assumes a GPU per process: its ``pytorch`` launcher calls
``torch.cuda.set_device(LOCAL_RANK)`` ("Found no NVIDIA driver" on a CPU-only machine), and
``Runner.wrap_model`` gives DistributedDataParallel ``device_ids=[LOCAL_RANK]``, which DDP
refuses for a model on the CPU. Two opt-in pieces instead of patching mmengine:

- :class:`AnyDeviceDistributedDataParallel`, selected by
  ``model_wrapper_cfg=dict(type='convnext_dense.AnyDeviceDistributedDataParallel')``;
- :func:`init_process_group_without_accelerator`, which our tools call for
  ``--launcher pytorch`` on a machine without accelerator, before mmengine would initialise
  the process group itself (the Runner then finds it initialised and leaves it alone).
"""
import datetime
import warnings
from typing import Optional

import torch
from mmengine.model.wrappers import MMDistributedDataParallel

from ..errors import ConfigError
from ..registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class AnyDeviceDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's ``MMDistributedDataParallel`` that also wraps a model on the CPU.

    For a module whose parameters are all on the CPU:

    - ``device_ids`` (which mmengine's Runner always passes) is dropped, as DDP requires;
    - ``SyncBatchNorm`` layers, which DDP refuses on the CPU ("SyncBatchNorm layers only work
      with GPU modules"), become BatchNorm with per-process statistics, as mmengine does for a
      one-process run (with a warning).

    On any device, a gradient whose strides differ from its parameter's only along dimensions
    of size 1 (the CPU depthwise-convolution kernels return the ``[C, 1, 7, 7]`` weight
    gradient as ``(49, 1, 7, 1)`` for a ``(49, 49, 7, 1)`` parameter: the same memory) is
    viewed with the parameter's strides before DDP reads it, so DDP neither warns "Grad
    strides do not match bucket view strides" nor copies it at every step.
    """

    def __init__(self, module, **kwargs) -> None:
        if all(p.device.type == 'cpu' for p in module.parameters()):
            if kwargs.get('device_ids') is not None:
                kwargs['device_ids'] = None
            module = _without_sync_batchnorm(module)
        _match_grad_strides(module)
        super().__init__(module=module, **kwargs)


def _without_sync_batchnorm(module):
    from mmengine.model import revert_sync_batchnorm
    if not any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules()):
        return module
    warnings.warn('Distributed training on CPU processes: SyncBatchNorm layers need GPUs, so '
                  'they become BatchNorm layers with statistics per process (as in a '
                  'one-process run); the batch statistics are not synchronised across '
                  'processes.')
    return revert_sync_batchnorm(module)


def _restride(grad, shape, strides):
    """``grad`` viewed with ``strides`` when they differ only where the size is 1."""
    if grad is None or grad.layout != torch.strided or grad.stride() == strides or \
            any(a != b and n != 1 for a, b, n in zip(grad.stride(), strides, shape)):
        return grad
    return grad.as_strided(shape, strides)


def _match_grad_strides(module) -> None:
    """A gradient hook on every parameter with a dimension of size 1 (see
    :class:`AnyDeviceDistributedDataParallel`)."""
    for param in module.parameters():
        if param.requires_grad and param.dim() > 1 and 1 in param.shape:
            shape, strides = tuple(param.shape), param.stride()
            param.register_hook(lambda grad, s=shape, t=strides: _restride(grad, s, t))


def accelerator_available() -> bool:
    """Whether mmengine sees a GPU (or NPU, MLU, MUSA device)."""
    from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                                 is_npu_available)
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def init_process_group_without_accelerator(backend: str = 'gloo', init_backend: str = 'torch',
                                           timeout: Optional[float] = None, **kwargs) -> str:
    """Initialise torch.distributed from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) without ``torch.cuda.set_device``.

    Takes the keys of ``env_cfg.dist_cfg``; ``timeout`` is in seconds. ``'nccl'`` needs GPUs,
    so it becomes ``'gloo'`` with a warning. Returns the backend used.
    """
    if init_backend != 'torch':
        raise ConfigError(f'env_cfg.dist_cfg.init_backend={init_backend!r} needs GPUs; on a '
                          f"machine without GPU use init_backend='torch' with the gloo backend.")
    if backend == 'nccl':
        warnings.warn("No GPU is available: initialising torch.distributed with the 'gloo' "
                      "backend instead of 'nccl' (env_cfg.dist_cfg.backend).")
        backend = 'gloo'
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    torch.distributed.init_process_group(backend=backend, **kwargs)
    return backend
