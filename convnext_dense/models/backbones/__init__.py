from .convnext import GRN, ConvNeXt, LayerNorm2d

__all__ = ['ConvNeXt', 'GRN', 'LayerNorm2d']
