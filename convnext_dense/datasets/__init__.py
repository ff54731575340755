"""Built-in small datasets (see :mod:`convnext_dense.datasets.toy`)."""
from .toy import CLASSES as TOY_CLASSES
from .toy import PALETTE as TOY_PALETTE
from .toy import generate_scene, semantic_map, write_ade, write_coco

__all__ = ['TOY_CLASSES', 'TOY_PALETTE', 'generate_scene', 'semantic_map', 'write_ade',
           'write_coco']
