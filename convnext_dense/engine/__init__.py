"""Training-side additions: the layer-wise lr-decay optimizer wrapper constructor."""
from .layer_decay import LearningRateDecayOptimizerConstructor, get_layer_id

__all__ = ['LearningRateDecayOptimizerConstructor', 'get_layer_id']
