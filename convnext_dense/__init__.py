"""ConvNeXt for dense prediction on the OpenMMLab 3.x stack.

``import convnext_dense`` registers our components in the ``convnext_dense`` scope (the
backbone, the optimizer constructor, hooks, the checked image loader, the CPU-capable DDP
wrapper and the atomic file backend), which a config selects by name. Besides that it applies
only the fixes without which the stack does not run on current torch
(:mod:`convnext_dense.compat`); it changes nothing else in mmengine, mmcv, mmdet or mmseg.
"""
from . import compat

compat.apply()

from .registry import MODEL_WRAPPERS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402
from .models import ConvNeXt, convert_checkpoint  # noqa: E402
from .engine import (AnyDeviceDistributedDataParallel, AtomicCheckpointHook,  # noqa: E402
                     DatasetCheckHook, LearningRateDecayOptimizerConstructor)
from .datasets import LoadImageFromFileChecked  # noqa: E402

__version__ = '0.1.0'
__all__ = ['AnyDeviceDistributedDataParallel', 'AtomicCheckpointHook', 'ConvNeXt',
           'DatasetCheckHook', 'LearningRateDecayOptimizerConstructor',
           'LoadImageFromFileChecked', 'MODELS', 'MODEL_WRAPPERS', 'OPTIM_WRAPPER_CONSTRUCTORS',
           'convert_checkpoint']
