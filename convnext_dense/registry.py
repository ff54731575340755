"""Child registries of mmengine's root registries, scope ``convnext_dense``.

Anything registered here is reachable from mmdet / mmseg / mmpretrain configs as
``type='convnext_dense.<Name>'`` once ``convnext_dense`` is imported (for example through
``custom_imports=dict(imports=['convnext_dense'])``).
"""
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.registry import MODEL_WRAPPERS as ROOT_MODEL_WRAPPERS
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import TRANSFORMS as ROOT_TRANSFORMS
from mmengine.registry import Registry

SCOPE = 'convnext_dense'

MODELS = Registry('model', parent=ROOT_MODELS, scope=SCOPE,
                  locations=['convnext_dense.models'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor', parent=ROOT_OPTIM_WRAPPER_CONSTRUCTORS, scope=SCOPE,
    locations=['convnext_dense.engine'])
HOOKS = Registry('hook', parent=ROOT_HOOKS, scope=SCOPE, locations=['convnext_dense.engine'])
TRANSFORMS = Registry('transform', parent=ROOT_TRANSFORMS, scope=SCOPE,
                      locations=['convnext_dense.datasets'])
MODEL_WRAPPERS = Registry('model_wrapper', parent=ROOT_MODEL_WRAPPERS, scope=SCOPE,
                          locations=['convnext_dense.engine'])
