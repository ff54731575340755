"""An adaptive average pool that stays correct when an exported graph gets another input size.

``nn.AdaptiveAvgPool2d(s)`` with ``s > 1`` (UperNet's pyramid pooling: scales 1, 2, 3, 6) is
lowered by torch's ONNX exporters into a pool or gathers fitted to the example input: a graph
exported with dynamic height and width is wrong at any other size (measured with the dynamo
exporter: a pool exported at 12x12 gives a 9x9 output at 18x18 and wrong values at 13x13;
the toy UperNet exported at 96x128 stops with "GatherND ... invalid index" at 128x160).
:class:`ShapeAgnosticAdaptiveAvgPool2d` computes the
same bins as two small averaging matrices built from the actual size at run time, which every
exporter keeps symbolic.
"""
import torch
import torch.nn as nn

from ..errors import ConfigError


def _averaging_matrix(size: torch.Tensor, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) matrix whose row i averages the pixels of adaptive-pool bin i:
    [floor(i * size / bins), ceil((i + 1) * size / bins))."""
    index = torch.arange(bins, device=like.device).unsqueeze(1)  # (bins, 1)
    pixel = torch.arange(size, device=like.device).unsqueeze(0)  # (1, size)
    start = torch.div(index * size, bins, rounding_mode='floor')
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode='floor')
    inside = ((pixel >= start) & (pixel < end)).to(like.dtype)
    return inside / (end - start).to(like.dtype)


class ShapeAgnosticAdaptiveAvgPool2d(nn.Module):
    """Same output as ``nn.AdaptiveAvgPool2d(output_size)`` for (N, C, H, W) input, any H and
    W (up to float rounding): (N, C, out_h, out_w)."""

    def __init__(self, output_size):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if any(s is None for s in output_size):
            raise ConfigError(f'ShapeAgnosticAdaptiveAvgPool2d needs a fixed output size, got '
                              f'{output_size}.')
        self.output_size = tuple(int(s) for s in output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _averaging_matrix(x.shape[-2], self.output_size[0], x)  # (out_h, H)
        cols = _averaging_matrix(x.shape[-1], self.output_size[1], x)  # (out_w, W)
        return rows @ x @ cols.transpose(0, 1)

    def extra_repr(self) -> str:
        return f'output_size={self.output_size}'


def replace_adaptive_pools(model: nn.Module) -> int:
    """Replace, in place, every ``nn.AdaptiveAvgPool2d`` of ``model`` whose output is larger
    than 1x1 (a global pool exports as a plain mean) by
    :class:`ShapeAgnosticAdaptiveAvgPool2d`; return how many were replaced. Use it on the copy
    of a model that is being exported, not on a model you train."""
    count = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.AdaptiveAvgPool2d:
                size = child.output_size
                size = (size, size) if isinstance(size, int) else tuple(size)
                if size != (1, 1) and None not in size:  # None: keep that input size
                    setattr(module, child_name, ShapeAgnosticAdaptiveAvgPool2d(size))
                    count += 1
    return count
