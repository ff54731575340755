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

from ..registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class AnyDeviceDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's ``MMDistributedDataParallel`` that also wraps a model on the CPU.

    For a module whose parameters are all on the CPU, ``device_ids`` (which mmengine's Runner
    always passes) is dropped, as DDP requires; on GPUs it behaves as its parent.
    """

    def __init__(self, module, **kwargs) -> None:
        if kwargs.get('device_ids') is not None and all(
                p.device.type == 'cpu' for p in module.parameters()):
            kwargs['device_ids'] = None
        super().__init__(module=module, **kwargs)


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
        raise ValueError(f'env_cfg.dist_cfg.init_backend={init_backend!r} needs GPUs; on a '
                         f"machine without GPU use init_backend='torch' with the gloo backend.")
    if backend == 'nccl':
        warnings.warn("No GPU is available: initialising torch.distributed with the 'gloo' "
                      "backend instead of 'nccl' (env_cfg.dist_cfg.backend).")
        backend = 'gloo'
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    torch.distributed.init_process_group(backend=backend, **kwargs)
    return backend
