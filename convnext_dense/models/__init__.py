from ..checkpoint.layouts import convert_checkpoint, load_backbone_checkpoint
from .backbones import ConvNeXt, GRN, LayerNorm2d

__all__ = ['ConvNeXt', 'GRN', 'LayerNorm2d', 'convert_checkpoint', 'load_backbone_checkpoint']
