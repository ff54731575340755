from .backbones import ConvNeXt, GRN, LayerNorm2d
from .checkpoint import convert_checkpoint, load_backbone_checkpoint

__all__ = ['ConvNeXt', 'GRN', 'LayerNorm2d', 'convert_checkpoint', 'load_backbone_checkpoint']
