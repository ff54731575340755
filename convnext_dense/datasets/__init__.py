"""Built-in small datasets (see :mod:`convnext_dense.datasets.toy`), dataset input checks
(:mod:`convnext_dense.datasets.checks`) and the checked image loader."""
from .checks import CorruptImageError, DatasetError
from .toy import CLASSES as TOY_CLASSES
from .toy import PALETTE as TOY_PALETTE
from .toy import generate_scene, semantic_map, write_ade, write_coco
from .transforms import LoadImageFromFileChecked

__all__ = ['CorruptImageError', 'DatasetError', 'LoadImageFromFileChecked', 'TOY_CLASSES',
           'TOY_PALETTE', 'generate_scene', 'semantic_map', 'write_ade', 'write_coco']
