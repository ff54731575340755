"""Built-in small datasets (see :mod:`convnext_dense.datasets.toy`), dataset input checks
(:mod:`convnext_dense.datasets.checks`) and the checked image loader."""
from .checks import (CorruptImageError, DatasetError, build_checked_dataset, check_built_dataset,
                     check_dataset_config)
from .transforms import LoadImageFromFileChecked

__all__ = ['CorruptImageError', 'DatasetError', 'LoadImageFromFileChecked', 'TOY_CLASSES',
           'TOY_PALETTE', 'build_checked_dataset', 'check_built_dataset', 'check_dataset_config',
           'generate_scene', 'semantic_map', 'write_ade', 'write_coco']

# The toy generator is loaded on first use, not by `import convnext_dense`, so that
# `python -m convnext_dense.datasets.toy` runs it as __main__ without a runpy warning.
_TOY_NAMES = {'TOY_CLASSES': 'CLASSES', 'TOY_PALETTE': 'PALETTE', 'generate_scene': None,
              'semantic_map': None, 'write_ade': None, 'write_coco': None}


def __getattr__(name):
    if name in _TOY_NAMES:
        from . import toy
        return getattr(toy, _TOY_NAMES[name] or name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
