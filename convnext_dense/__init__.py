"""ConvNeXt for dense prediction on the OpenMMLab 3.x stack.

``import convnext_dense`` applies the compatibility patches (:mod:`convnext_dense.compat`) and
the dataset input checks (:mod:`convnext_dense.datasets.checks`), and registers the backbone,
the optimizer constructor, the hooks and the transforms in the ``convnext_dense`` scope.
"""
from . import compat

compat.apply()

from .registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402
from .models import ConvNeXt, convert_checkpoint  # noqa: E402
from .engine import LearningRateDecayOptimizerConstructor  # noqa: E402
from . import datasets  # noqa: E402  (dataset input checks, LoadImageFromFileChecked)

datasets.checks.apply()

__version__ = '0.1.0'
__all__ = ['ConvNeXt', 'convert_checkpoint', 'LearningRateDecayOptimizerConstructor', 'MODELS',
           'OPTIM_WRAPPER_CONSTRUCTORS']
