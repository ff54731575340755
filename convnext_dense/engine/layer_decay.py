"""Layer-wise learning-rate decay for ConvNeXt backbones in detectors and segmentors.

The rule of the ConvNeXt paper's dense code, as mmdet 3.x's and mmseg 1.x's
``LearningRateDecayOptimizerConstructor`` apply it: with ``L = num_layers + 2``, a parameter of
layer id ``k`` (the stem 0, stage blocks by depth, everything outside the backbone
``num_layers + 1``; ``layer_wise`` or ``stage_wise``) gets ``lr * decay_rate ** (L - k - 1)``;
1-D parameters and biases get no weight decay. On top of that: ``num_layers`` read from the
backbone when not given, mmengine-style ``custom_keys``, no weight decay for ConvNeXt V2's GRN
unless ``grn_weight_decay=True``, one group per (layer id, lr, weight decay) with a logged
table, and DDP-wrapped models. The full table of layer ids and the reasons: docs/layer_decay.md.
"""
import logging
from numbers import Real
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..errors import ConfigError, ConfigTypeError
from ..registry import OPTIM_WRAPPER_CONSTRUCTORS

DECAY_TYPES = ('layer_wise', 'stage_wise')
PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers', 'custom_keys', 'grn_weight_decay')
TOKEN_NAMES = ('cls_token', 'mask_token', 'pos_embed')
NO_DECAY_NAMES = ('pos_embed', 'cls_token')
GRN_PARAM_NAMES = ('grn.gamma', 'grn.beta')
RESERVED_GROUP_KEYS = ('params', 'lr', 'weight_decay', 'lr_scale', 'layer_id')
WRAPPER_PREFIX = 'module.'
BACKBONE = 'backbone.'
CONVNEXT_PREFIXES = ('backbone.downsample_layers.', 'backbone.stages.')


def strip_wrapper_prefix(name: str) -> str:
    """``module.backbone.stages.0.0.gamma`` -> ``backbone.stages.0.0.gamma`` (DDP wrappers)."""
    while name.startswith(WRAPPER_PREFIX):
        name = name[len(WRAPPER_PREFIX):]
    return name


def default_num_layers(stage2_depth: int) -> int:
    """The official ``num_layers``: 6 for at most 9 blocks in stage 3 (``stages.2``), else 12."""
    return 6 if stage2_depth <= 9 else 12


def _stage_and_block(name: str, with_block: bool) -> Tuple[int, int]:
    """(i, j) of ``backbone.stages.i.j.*``; (i, 0) of ``backbone.downsample_layers.i.*``."""
    parts = name.split('.')
    try:
        stage = int(parts[2])
        block = int(parts[3]) if with_block else 0
    except (IndexError, ValueError):
        raise ConfigError(
            f'LearningRateDecayOptimizerConstructor cannot read the stage/block numbers of '
            f'parameter {name!r}: ConvNeXt names look like backbone.downsample_layers.<stage>.* '
            f'and backbone.stages.<stage>.<block>.*') from None
    if not 0 <= stage <= 3:
        raise ConfigError(f'Parameter {name!r} has stage {stage}; a ConvNeXt backbone has stages '
                          f'0..3 only.')
    return stage, block


def get_layer_id(name: str, decay_type: str, num_layers: int) -> int:
    """Layer id of parameter ``name`` (relative to the detector/segmentor, ``module.`` allowed).

    ``layer_wise`` ids run 0..num_layers+1, ``stage_wise`` ids 0..4 and num_layers+1 for
    everything outside the backbone's stem, downsamplers and stages.
    """
    if decay_type not in DECAY_TYPES:
        raise ConfigError(f'Unknown decay_type {decay_type!r}; valid decay types: '
                          f'{", ".join(DECAY_TYPES)}.')
    name = strip_wrapper_prefix(name)
    if name in tuple(BACKBONE + token for token in TOKEN_NAMES):
        return 0
    if name.startswith('backbone.downsample_layers.'):
        stage, _ = _stage_and_block(name, with_block=False)
        if decay_type == 'stage_wise':
            return 0
        return (0, 2, 3, num_layers)[stage]
    if name.startswith('backbone.stages.'):
        stage, block = _stage_and_block(name, with_block=True)
        if decay_type == 'stage_wise':
            return stage + 1
        return (1, 2, 3 + block // 3, num_layers)[stage]
    return num_layers + 1


def applies_weight_decay(name: str, ndim: int) -> bool:
    """False for 1-D parameters, biases and ``pos_embed`` / ``cls_token``."""
    name = strip_wrapper_prefix(name)
    return not (ndim == 1 or name.endswith('.bias') or name.rsplit('.', 1)[-1] in NO_DECAY_NAMES)


def is_grn_param(name: str) -> bool:
    """True for ConvNeXt V2's GRN ``gamma`` / ``beta`` (``....grn.gamma``, ``....grn.beta``)."""
    name = strip_wrapper_prefix(name)
    return name.endswith(tuple('.' + suffix for suffix in GRN_PARAM_NAMES)) or \
        name in GRN_PARAM_NAMES


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer wrapper constructor with ConvNeXt layer-wise / stage-wise lr decay.

    Use it from an mmdet / mmseg / mmengine config::

        optim_wrapper = dict(
            type='OptimWrapper',  # or 'AmpOptimWrapper'
            constructor='convnext_dense.LearningRateDecayOptimizerConstructor',
            optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
            paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6,
                               custom_keys={'roi_head': dict(lr_mult=10.)}))

    Args:
        optim_wrapper_cfg: the ``optim_wrapper`` config without ``constructor`` and
            ``paramwise_cfg`` (``optimizer`` must set ``lr``).
        paramwise_cfg: ``decay_rate`` (required, > 0), ``decay_type`` (``'layer_wise'``, the
            default, or ``'stage_wise'``), ``num_layers`` (default: 6 or 12 from the depth of
            ``backbone.stages.2``), ``custom_keys`` (mmengine's format: ``{substring:
            dict(lr_mult=..., decay_mult=..., **other_optimizer_options)}``),
            ``grn_weight_decay`` (default False: ConvNeXt V2's GRN ``gamma`` / ``beta`` get
            weight decay 0, as the V2 maintainers advise; True gives them the optimizer's
            weight decay, as mmdet's / mmseg's constructors do).

    The built optimizer's param groups carry, besides ``params``, ``lr`` and ``weight_decay``,
    the keys ``layer_id`` and ``lr_scale`` (lr / base lr) and any extra options of the matched
    custom key. See the module docstring for the exact rule.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        cfg = self.paramwise_cfg
        unknown = sorted(set(cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ConfigError(
                f'optim_wrapper.paramwise_cfg has keys {unknown} that '
                f'LearningRateDecayOptimizerConstructor does not support; valid keys: '
                f'{", ".join(PARAMWISE_KEYS)}. (If they come from a _base_ config, replace the '
                f'whole paramwise_cfg with _delete_=True.)')
        if 'decay_rate' not in cfg:
            raise ConfigError('optim_wrapper.paramwise_cfg.decay_rate is required by '
                              'LearningRateDecayOptimizerConstructor, e.g. '
                              "paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise').")
        self.decay_rate = cfg['decay_rate']
        if (isinstance(self.decay_rate, bool) or not isinstance(self.decay_rate, Real)
                or not self.decay_rate > 0):
            raise ConfigError(f'optim_wrapper.paramwise_cfg.decay_rate must be a number > 0 '
                              f'(usually 0.7 - 0.95), got {self.decay_rate!r}.')
        self.decay_type = cfg.get('decay_type', 'layer_wise')
        if self.decay_type not in DECAY_TYPES:
            raise ConfigError(f'optim_wrapper.paramwise_cfg.decay_type={self.decay_type!r} is '
                              f'unknown; valid decay types: {", ".join(DECAY_TYPES)}.')
        self.num_layers = cfg.get('num_layers')
        if self.num_layers is not None and (isinstance(self.num_layers, bool)
                                            or not isinstance(self.num_layers, int)
                                            or self.num_layers < 1):
            raise ConfigError(f'optim_wrapper.paramwise_cfg.num_layers must be a positive int '
                              f'or left out (6 or 12 from the backbone), got '
                              f'{self.num_layers!r}.')
        self.grn_weight_decay = cfg.get('grn_weight_decay', False)
        if not isinstance(self.grn_weight_decay, bool):
            raise ConfigTypeError(
                f'optim_wrapper.paramwise_cfg.grn_weight_decay must be True or False (False, '
                f'the default, exempts ConvNeXt V2 GRN gamma/beta from weight decay), got '
                f'{self.grn_weight_decay!r}.')
        self.custom_keys = dict(cfg.get('custom_keys', {}))
        for key, value in self.custom_keys.items():
            if not isinstance(value, dict):
                raise ConfigTypeError(f'optim_wrapper.paramwise_cfg.custom_keys[{key!r}] must be '
                                      f'a dict such as dict(lr_mult=10.), got {value!r}.')
            reserved = sorted(set(value) & set(RESERVED_GROUP_KEYS))
            if reserved:
                raise ConfigError(f'optim_wrapper.paramwise_cfg.custom_keys[{key!r}] sets '
                                  f'{reserved}, which the constructor computes itself; use '
                                  f'lr_mult / decay_mult instead.')
            for mult in ('lr_mult', 'decay_mult'):
                if mult in value and (isinstance(value[mult], bool)
                                      or not isinstance(value[mult], Real)):
                    raise ConfigTypeError(
                        f'optim_wrapper.paramwise_cfg.custom_keys[{key!r}].{mult} must be a '
                        f'number, got {value[mult]!r}.')
        # mmengine's order: longest key first, ties in alphabetical order.
        self._sorted_keys = sorted(sorted(self.custom_keys), key=len, reverse=True)
        if self.base_lr is None:
            raise ConfigError('optim_wrapper.optimizer.lr must be set: '
                              'LearningRateDecayOptimizerConstructor scales it per layer.')

    def match_custom_key(self, name: str) -> Optional[str]:
        """The custom key that applies to parameter ``name`` (mmengine's choice), or None."""
        name = strip_wrapper_prefix(name)
        for key in self._sorted_keys:
            if key in name:
                return key
        return None

    def resolve_num_layers(self, names: Sequence[str]) -> Tuple[int, str]:
        """``num_layers`` and where it came from, given all parameter names of the model."""
        if self.num_layers is not None:
            return self.num_layers, 'from paramwise_cfg'
        blocks = [_stage_and_block(name, with_block=True)[1] for name in names
                  if name.startswith('backbone.stages.2.')]
        if not blocks:
            return 12, 'default; the model has no backbone.stages.2'
        depth = max(blocks) + 1
        return default_num_layers(depth), f'default for {depth} blocks in backbone.stages.2'

    def _check_num_layers(self, num_layers: int, names: Sequence[str]) -> None:
        if self.decay_type == 'stage_wise':
            if num_layers < 4:
                raise ConfigError(f'optim_wrapper.paramwise_cfg.num_layers={num_layers} is too '
                                  f'small for stage_wise decay: the stages take ids 1..4 and '
                                  f'the rest num_layers + 1, so num_layers must be >= 4 '
                                  f'(the official value is 12).')
            return
        stage2 = [name for name in names if name.startswith('backbone.stages.2.')]
        if not stage2:
            return
        highest = max(get_layer_id(name, 'layer_wise', num_layers) for name in stage2)
        if highest >= num_layers:
            depth = max(_stage_and_block(name, True)[1] for name in stage2) + 1
            raise ConfigError(
                f'optim_wrapper.paramwise_cfg.num_layers={num_layers} is too small for a '
                f'backbone with {depth} blocks in backbone.stages.2: layer_wise gives them ids '
                f'up to {highest}, which must stay below num_layers (the id of stages.3). Use '
                f'num_layers >= {highest + 1} (officially 6 for 9 blocks, 12 for 27), or leave '
                f'it out to get the default.')

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   **kwargs) -> None:
        """Append the layer-decayed parameter groups of ``module`` (the whole model) to
        ``params``. ``prefix`` and ``kwargs`` exist for signature compatibility only."""
        named = [(strip_wrapper_prefix(name), param)
                 for name, param in module.named_parameters()]
        names = [name for name, _ in named]
        convnext_like = any(name.startswith(CONVNEXT_PREFIXES) for name in names)
        has_backbone = any(name.startswith(BACKBONE) for name in names)
        if has_backbone and not convnext_like:
            examples = [name for name in names if name.startswith(BACKBONE)][:3]
            raise ConfigError(
                f'LearningRateDecayOptimizerConstructor needs a ConvNeXt-like backbone '
                f'(parameters named backbone.downsample_layers.* and backbone.stages.*), but '
                f'this model\'s backbone has parameters such as {examples}. Use '
                f"optim_wrapper.constructor='DefaultOptimWrapperConstructor' for it.")
        num_layers, origin = self.resolve_num_layers(names)
        self._check_num_layers(num_layers, names)
        total_layers = num_layers + 2
        if not has_backbone:
            print_log(
                f'LearningRateDecayOptimizerConstructor: the model has no backbone.* '
                f'parameters, so the {self.decay_type} decay has nothing to act on; all '
                f'parameters get layer id {num_layers + 1} (lr scale 1.0).',
                logger='current', level=logging.WARNING)

        groups: Dict[tuple, dict] = {}
        frozen = 0
        for name, param in named:
            if not param.requires_grad:
                frozen += 1
                continue
            layer_id = get_layer_id(name, self.decay_type, num_layers)
            scale = self.decay_rate ** (total_layers - layer_id - 1)
            weight_decay = self.base_wd if applies_weight_decay(name, param.ndim) else 0.
            if not self.grn_weight_decay and is_grn_param(name):
                weight_decay = 0.
            lr_mult, extra = 1., {}
            key = self.match_custom_key(name)
            if key is not None:
                options = self.custom_keys[key]
                lr_mult = options.get('lr_mult', 1.)
                if weight_decay is not None:
                    weight_decay = weight_decay * options.get('decay_mult', 1.)
                extra = {k: v for k, v in options.items() if k not in ('lr_mult', 'decay_mult')}
            lr = self.base_lr * scale * lr_mult
            group_key = (layer_id, lr, weight_decay, repr(sorted(extra.items())))
            group = groups.get(group_key)
            if group is None:
                group = groups[group_key] = dict(
                    params=[], lr=lr, lr_scale=scale * lr_mult, layer_id=layer_id, **extra)
                if weight_decay is not None:
                    group['weight_decay'] = weight_decay
                group['_names'], group['_keys'] = [], set()
            group['params'].append(param)
            group['_names'].append(name)
            if key is not None:
                group['_keys'].add(key)

        ordered = sorted(groups.items(), key=lambda item: (
            item[0][0], item[0][1], -(item[0][2] or 0.), item[0][3]))
        new_groups = [group for _, group in ordered]
        self._log_summary(new_groups, num_layers, origin, frozen)
        for group in new_groups:
            del group['_names'], group['_keys']
        params.extend(new_groups)

    def _log_summary(self, groups: List[dict], num_layers: int, origin: str,
                     frozen: int) -> None:
        header = ('layer_id', 'lr_scale', 'lr', 'weight_decay', 'tensors', 'params',
                  'custom_keys', 'first parameter')
        rows = []
        for group in groups:
            wd = group.get('weight_decay')
            rows.append((str(group['layer_id']), f"{group['lr_scale']:.6g}",
                         f"{group['lr']:.4g}", 'default' if wd is None else f'{wd:.4g}',
                         str(len(group['params'])),
                         f"{sum(p.numel() for p in group['params']):,}",
                         ','.join(sorted(group['_keys'])) or '-', group['_names'][0]))
        widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

        def line(row):
            return '  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

        tensors = sum(len(group['params']) for group in groups)
        numel = sum(p.numel() for group in groups for p in group['params'])
        text = [
            f'LearningRateDecayOptimizerConstructor: {self.decay_type}, decay_rate='
            f'{self.decay_rate}, num_layers={num_layers} ({origin}), base lr={self.base_lr}, '
            f'base weight_decay={self.base_wd}, grn_weight_decay={self.grn_weight_decay}, '
            f'custom_keys={sorted(self.custom_keys) or "-"}',
            line(header)] + [line(row) for row in rows] + [
            f'{len(groups)} groups, {tensors} tensors, {numel:,} parameters; '
            f'{frozen} frozen tensors (requires_grad=False) left out.']
        MMLogger.get_current_instance().info('\n'.join(text))
