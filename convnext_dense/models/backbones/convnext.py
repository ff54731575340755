"""ConvNeXt V1 / V2 backbone for dense prediction (Liu et al. 2022; Woo et al. 2023).

Parameter names follow the official repositories (``downsample_layers``, ``stages.i.j.dwconv``,
``pwconv1``, ``gamma``, ``grn.gamma``, ``norm{i}``), so official ImageNet and dense checkpoints
load without conversion.

The network runs in ``torch.channels_last`` memory format: the (N, C, H, W) -> (N, H, W, C)
permutes around each block's LayerNorm and MLP are then free views instead of copies.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as activation_checkpoint
from timm.layers import DropPath
from mmengine.model import BaseModule

from ...errors import ConfigError, ConfigKeyError, ConfigTypeError
from ...registry import MODELS

# norm_eps: the eps of every LayerNorm (1e-6 in the official models; timm's CLIP ConvNeXt-XXL
# uses 1e-5, so a dict arch may set it)
V1 = dict(use_grn=False, layer_scale_init_value=1e-6, norm_eps=1e-6)
V2 = dict(use_grn=True, layer_scale_init_value=0.0, norm_eps=1e-6)
ARCHS: Dict[str, dict] = {
    'tiny': dict(depths=[3, 3, 9, 3], dims=[96, 192, 384, 768], **V1),
    'small': dict(depths=[3, 3, 27, 3], dims=[96, 192, 384, 768], **V1),
    'base': dict(depths=[3, 3, 27, 3], dims=[128, 256, 512, 1024], **V1),
    'large': dict(depths=[3, 3, 27, 3], dims=[192, 384, 768, 1536], **V1),
    'xlarge': dict(depths=[3, 3, 27, 3], dims=[256, 512, 1024, 2048], **V1),
    'v2-atto': dict(depths=[2, 2, 6, 2], dims=[40, 80, 160, 320], **V2),
    'v2-femto': dict(depths=[2, 2, 6, 2], dims=[48, 96, 192, 384], **V2),
    'v2-pico': dict(depths=[2, 2, 6, 2], dims=[64, 128, 256, 512], **V2),
    'v2-nano': dict(depths=[2, 2, 8, 2], dims=[80, 160, 320, 640], **V2),
    'v2-tiny': dict(depths=[3, 3, 9, 3], dims=[96, 192, 384, 768], **V2),
    'v2-base': dict(depths=[3, 3, 27, 3], dims=[128, 256, 512, 1024], **V2),
    'v2-large': dict(depths=[3, 3, 27, 3], dims=[192, 384, 768, 1536], **V2),
    'v2-huge': dict(depths=[3, 3, 27, 3], dims=[352, 704, 1408, 2816], **V2),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map; returns (N, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization of ConvNeXt V2 on an (N, H, W, C) map.

    ``gamma`` and ``beta`` have the official shape (1, 1, 1, C) and start at zero (identity).
    The spatial L2 norm is computed in float32 whatever the input dtype (an fp16 norm is inf
    once it passes 65504, e.g. 3000 over a 24x24 map, and the block's output becomes NaN);
    the output has the input's dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm_dtype = torch.promote_types(x.dtype, torch.float32)
        spatial_norm = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True,  # (N, 1, 1, C)
                                                dtype=norm_dtype)
        relative = spatial_norm / (spatial_norm.mean(dim=-1, keepdim=True) + self.eps)
        # fp16 x with fp32 gamma / beta (autocast): the affine part, and so their gradients'
        # sums over space, in fp32; the output rounded once to x's dtype
        out = x + torch.addcmul(self.beta, self.gamma, x * relative.to(x.dtype))
        return out.to(x.dtype)


class Block(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> Linear 4x -> GELU -> (GRN) -> Linear -> layer scale,
    plus the residual with drop path. (N, C, H, W) in and out."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6,
                 use_grn: bool = False, with_cp: bool = False, norm_eps: float = 1e-6):
        super().__init__()
        self.with_cp = with_cp
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim) if use_grn else None
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
                      if layer_scale_init_value > 0 else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        x = self.act(self.pwconv1(self.norm(x)))
        if self.grn is not None:
            x = self.grn(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = x * self.gamma
        return self.drop_path(x.permute(0, 3, 1, 2))

    def _fused_inference(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as ``x + _residual(x)`` without autograd, through oneDNN's fused
        linear + bias + GELU and linear + bias + residual-add kernels (layer scale folded into
        the second linear): two fewer passes over the 4C-wide activations per block."""
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = torch.ops.mkldnn._linear_pointwise(y, self.pwconv1.weight, self.pwconv1.bias,
                                               'gelu', [], 'none')
        if self.grn is not None:
            y = self.grn(y)
        weight, bias = self.pwconv2.weight, self.pwconv2.bias
        if self.gamma is not None:
            weight, bias = weight * self.gamma[:, None], bias * self.gamma
        shortcut = x.permute(0, 2, 3, 1).contiguous()  # a free view for channels-last x
        y = torch.ops.mkldnn._linear_pointwise.binary(y, shortcut, weight, bias, 'add')
        return y.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _can_fuse(x) and not (self.training or torch.is_grad_enabled()):
            return self._fused_inference(x)
        if self.with_cp and x.requires_grad:
            return x + activation_checkpoint.checkpoint(self._residual, x, use_reentrant=False)
        return x + self._residual(x)


_HAS_FUSED_LINEAR = (torch.backends.mkldnn.is_available()
                     and hasattr(torch.ops.mkldnn, '_linear_pointwise'))


def _can_fuse(x: torch.Tensor) -> bool:
    """oneDNN fused kernels apply to eager fp32 CPU inference (not autocast, compile or
    jit tracing, which FLOP counters and ONNX export use)."""
    return (_HAS_FUSED_LINEAR and x.device.type == 'cpu' and x.dtype == torch.float32
            and not torch.is_autocast_enabled('cpu') and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


def resolve_arch(arch: Union[str, dict]) -> dict:
    """Return dict(depths, dims, use_grn, layer_scale_init_value, norm_eps) for an arch name or
    dict (a dict's missing keys take the V1 defaults)."""
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ConfigError(f"Unknown ConvNeXt arch {arch!r}. Valid archs: "
                              f"{', '.join(ARCHS)}; or pass dict(depths=[...], dims=[...]).")
        return dict(ARCHS[arch])
    if isinstance(arch, dict):
        missing = {'depths', 'dims'} - set(arch)
        if missing:
            raise ConfigError(f'ConvNeXt arch dict needs keys depths and dims; missing '
                              f'{sorted(missing)} in {arch}.')
        if len(arch['depths']) != 4 or len(arch['dims']) != 4:
            raise ConfigError(f'ConvNeXt arch dict needs 4 depths and 4 dims, got {arch}.')
        return {**V1, **arch}
    raise ConfigTypeError(f'ConvNeXt arch must be a str or dict, got {type(arch).__name__}.')


@MODELS.register_module()
class ConvNeXt(BaseModule):
    """ConvNeXt backbone returning multi-scale features for detection / segmentation.

    Args:
        arch: one of :data:`ARCHS` (V1 ``'tiny'`` ... ``'xlarge'``, V2 ``'v2-atto'`` ...
            ``'v2-huge'``) or ``dict(depths=[4 ints], dims=[4 ints])``, optionally with
            ``norm_eps`` (every LayerNorm's eps; default 1e-6, timm's CLIP ConvNeXt-XXL uses
            1e-5), ``use_grn`` and ``layer_scale_init_value``.
        in_channels: input image channels.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks.
        layer_scale_init_value: initial layer-scale gamma; 0 disables layer scale.
            ``None`` takes the arch default (1e-6 for V1, 0 for V2).
        use_grn: GRN in the MLP; ``None`` takes the arch default (True for V2).
        out_indices: stages (0-3) whose maps are returned, each through ``norm{i}``.
        frozen_stages: stem and stages ``0..frozen_stages`` get no gradient and stay in eval
            mode; -1 freezes nothing.
        with_cp: activation checkpointing per block (less memory, slower backward).
        channels_last: run internally in channels-last memory format (faster on CPU and GPU);
            the returned maps are contiguous (N, C, H, W) either way.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL[, prefix=...][,
            sha256=...])`` loads official, FCMAE (sparse or dense), open_clip, timm (CLIP,
            DINOv3), DINOv3, mmpretrain or own checkpoints (see :data:`LAYOUTS` in
            convnext_dense/checkpoint/layouts.py); a URL is downloaded once into torch's hub cache, its
            SHA-256 checked against ``sha256`` (a hex prefix) or the hash in its file name.

    Shapes: input (N, in_channels, H, W); output tuple of (N, dims[i], H / 2**(i+2),
    W / 2**(i+2)) for i in ``out_indices``.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 drop_path_rate: float = 0.0,
                 layer_scale_init_value: Optional[float] = None,
                 use_grn: Optional[bool] = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 channels_last: bool = True,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        settings = resolve_arch(arch)
        if layer_scale_init_value is None:
            layer_scale_init_value = settings['layer_scale_init_value']
        if use_grn is None:
            use_grn = settings['use_grn']
        self.arch = arch
        self.depths = list(settings['depths'])
        self.dims = list(settings['dims'])
        self.out_indices = self._check_out_indices(out_indices)
        if not -1 <= frozen_stages <= 3:
            raise ConfigError(f'frozen_stages must be in -1..3, got {frozen_stages}.')
        self.frozen_stages = frozen_stages
        self.channels_last = channels_last
        eps = float(settings['norm_eps'])

        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_channels, self.dims[0], kernel_size=4, stride=4),
            LayerNorm2d(self.dims[0], eps=eps))])
        for i in range(1, 4):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(self.dims[i - 1], eps=eps),
                nn.Conv2d(self.dims[i - 1], self.dims[i], kernel_size=2, stride=2)))

        total = sum(self.depths)  # drop-path rate rises linearly from 0 over all blocks
        rates = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        self.stages = nn.ModuleList()
        first = 0
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            self.stages.append(nn.Sequential(*[
                Block(dim, rates[first + j], layer_scale_init_value, use_grn, with_cp, eps)
                for j in range(depth)]))
            first += depth
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(self.dims[i], eps=eps))

        self.apply(self._init_default)
        self._freeze_stages()

    @staticmethod
    def _check_out_indices(out_indices: Union[int, Sequence[int]]) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        result = []
        for index in out_indices:
            if not -4 <= index <= 3:
                raise ConfigError(f'out_indices must be stage numbers in 0..3 (or -4..-1), '
                                  f'got {tuple(out_indices)}.')
            result.append(index % 4)
        return tuple(sorted(set(result)))

    @staticmethod
    def _init_default(module: nn.Module) -> None:
        """The official initialisation: truncated normal (std 0.02) weights, zero biases."""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` through our converter;
        other init_cfg types go to mmengine."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            from ...checkpoint import load_backbone_checkpoint
            if 'checkpoint' not in cfg:
                raise ConfigKeyError("ConvNeXt init_cfg type='Pretrained' needs checkpoint=PATH.")
            load_backbone_checkpoint(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                                     sha256=cfg.get('sha256'))
            self._is_init = True
            return
        super().init_weights()

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages + 1):
            modules = [self.downsample_layers[i], self.stages[i]]
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
            for module in modules:
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True) -> 'ConvNeXt':
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).contiguous())
                if i == self.out_indices[-1]:
                    break
        return tuple(outs)
