"""Training-side additions: the layer-wise lr-decay optimizer wrapper constructor, hooks
(non-finite loss, reproducibility, dataset checks; the checkpoint hooks live in
:mod:`convnext_dense.checkpoint`) and CPU-capable distributed training."""
from ..checkpoint.atomic import (AtomicCheckpointHook, AtomicLocalBackend,
                                 find_latest_checkpoint, save_atomically, write_atomically)
from ..checkpoint.fit import CheckpointFitsModelHook
from .dataset_check import DatasetCheckHook
from .distributed import AnyDeviceDistributedDataParallel
from .layer_decay import LearningRateDecayOptimizerConstructor, get_layer_id
from .nonfinite_loss import StopOnNonFiniteLossHook
from .reproducibility import ReproducibilityHook

__all__ = ['AnyDeviceDistributedDataParallel', 'AtomicCheckpointHook', 'AtomicLocalBackend',
           'CheckpointFitsModelHook', 'DatasetCheckHook', 'LearningRateDecayOptimizerConstructor',
           'ReproducibilityHook', 'StopOnNonFiniteLossHook', 'find_latest_checkpoint',
           'get_layer_id', 'save_atomically', 'write_atomically']
