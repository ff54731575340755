"""Training-side additions: the layer-wise lr-decay optimizer wrapper constructor, hooks,
atomic checkpoint saving and CPU-capable distributed training."""
from .checkpointing import (AtomicCheckpointHook, AtomicLocalBackend, find_latest_checkpoint,
                            save_atomically, write_atomically)
from .distributed import AnyDeviceDistributedDataParallel
from .hooks import (CheckpointFitsModelHook, DatasetCheckHook, ReproducibilityHook,
                    StopOnNonFiniteLossHook)
from .layer_decay import LearningRateDecayOptimizerConstructor, get_layer_id

__all__ = ['AnyDeviceDistributedDataParallel', 'AtomicCheckpointHook', 'AtomicLocalBackend',
           'CheckpointFitsModelHook', 'DatasetCheckHook', 'LearningRateDecayOptimizerConstructor',
           'ReproducibilityHook', 'StopOnNonFiniteLossHook', 'find_latest_checkpoint',
           'get_layer_id', 'save_atomically', 'write_atomically']
