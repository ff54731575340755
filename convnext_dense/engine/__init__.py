"""Training-side additions: the layer-wise lr-decay optimizer wrapper constructor and hooks."""
from .hooks import CheckpointFitsModelHook, ReproducibilityHook, StopOnNonFiniteLossHook
from .layer_decay import LearningRateDecayOptimizerConstructor, get_layer_id

__all__ = ['CheckpointFitsModelHook', 'LearningRateDecayOptimizerConstructor',
           'ReproducibilityHook', 'StopOnNonFiniteLossHook', 'get_layer_id']
