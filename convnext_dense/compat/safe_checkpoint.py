"""Our weights-only loader for mmengine's checkpoint schemes, on torch >= 2.6.

For mmengine 0.10.x (checked on 0.10.7): it calls ``torch.load`` without ``weights_only``,
whose default became True in torch 2.6, so the checkpoints its Runner writes no longer load,
and its URL schemes go through ``torch.hub`` with full pickle. :func:`apply` registers
:func:`convnext_dense.checkpoint.io.load_checkpoint` for the local and URL schemes through
``CheckpointLoader.register_scheme`` (mmengine logs it as the ``weights_only`` backend). On
torch < 2.6 it does nothing.
"""
import re

import torch

from ..checkpoint.io import load_checkpoint

_SCHEMES = ('', 'http://', 'https://', 'torchvision://', 'modelzoo://', 'open-mmlab://',
            'openmmlab://', 'mmcls://')


def load_from_weights_only(filename: str, map_location=None):
    """mmengine's ``CheckpointLoader`` entry (it logs the name after ``load_from_``)."""
    return load_checkpoint(filename, map_location)


def _needed() -> bool:
    """torch < 2.6 loads everything by default; the fix is for >= 2.6."""
    version = tuple(int(p) for p in re.findall(r'\d+', torch.__version__)[:2])
    return version >= (2, 6)


def apply() -> None:
    """Register :func:`load_from_weights_only` for mmengine's local and URL schemes."""
    if not _needed():
        return
    from mmengine.runner.checkpoint import CheckpointLoader
    for prefix in _SCHEMES:
        CheckpointLoader.register_scheme(prefixes=prefix, loader=load_from_weights_only,
                                         force=True)
