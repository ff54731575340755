"""ConvNeXt for dense prediction on the OpenMMLab 3.x stack.

``import convnext_dense`` applies the compatibility patches (:mod:`convnext_dense.compat`) and
registers the backbone and the optimizer constructor in the ``convnext_dense`` scope.
"""
from . import compat

compat.apply()

from .registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402
from .models import ConvNeXt, convert_checkpoint  # noqa: E402
from . import engine  # noqa: E402
from .engine import LearningRateDecayOptimizerConstructor  # noqa: E402

__version__ = '0.1.0'
__all__ = ['ConvNeXt', 'convert_checkpoint', 'LearningRateDecayOptimizerConstructor', 'MODELS',
           'OPTIM_WRAPPER_CONSTRUCTORS']
