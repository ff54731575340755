"""Reading ConvNeXt checkpoints of every common layout into our (the official) key layout.

Layouts recognised by :func:`convert_checkpoint`:

- official ImageNet (``{'model': {...}}``) and official dense (``backbone.`` prefix): identity;
- timm: ``stem.0``, ``stages.i.downsample.k``, ``stages.i.blocks.j.conv_dw``, ``mlp.fc1``,
  ``mlp.grn.weight``;
- mmpretrain / mmdet / mmseg: ``backbone.`` prefix, ``depthwise_conv``, ``pointwise_conv1``,
  ``grn.gamma`` of shape (C,).

Classifier-head keys (``head.*``, the final ``norm.*``, timm ``norm_pre``) are dropped.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import _load_checkpoint

_CONTAINER_KEYS = ('state_dict', 'model', 'module', 'model_state')
_TIMM_RULES = [  # (pattern, replacement) applied in order to timm keys
    (r'^stem\.', 'downsample_layers.0.'),
    (r'^stages\.(\d+)\.downsample\.', r'downsample_layers.\1.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.'),
    (r'\.conv_dw\.', '.dwconv.'),
    (r'\.mlp\.fc1\.', '.pwconv1.'),
    (r'\.mlp\.fc2\.', '.pwconv2.'),
    (r'\.mlp\.grn\.weight$', '.grn.gamma'),
    (r'\.mlp\.grn\.bias$', '.grn.beta'),
]
_MMPRETRAIN_RULES = [
    (r'\.depthwise_conv\.', '.dwconv.'),
    (r'\.pointwise_conv1\.', '.pwconv1.'),
    (r'\.pointwise_conv2\.', '.pwconv2.'),
]
_HEAD = re.compile(r'^(head\.|norm\.|norm_pre\.|fc\.)')


def _apply_rules(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def extract_state_dict(checkpoint) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint (``state_dict`` / ``model`` / bare)."""
    for key in _CONTAINER_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if isinstance(checkpoint, dict):
        return checkpoint
    raise TypeError(f'expected a dict checkpoint, got {type(checkpoint).__name__}')


def convert_checkpoint(state_dict: Dict[str, torch.Tensor],
                       prefix: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Convert a ConvNeXt state dict of any layout above to ours.

    ``prefix`` selects a sub-model (default: ``backbone.`` when such keys exist, else all
    keys). A leading DDP ``module.`` is stripped. Shapes: GRN parameters become (1, 1, 1, C);
    1x1-conv MLP weights (C_out, C_in, 1, 1) become Linear weights (C_out, C_in).
    """
    state_dict = extract_state_dict(state_dict)
    items = [(k[len('module.'):] if k.startswith('module.') else k, v)
             for k, v in state_dict.items()]
    if prefix is None and any(k.startswith('backbone.') for k, _ in items):
        prefix = 'backbone.'
    if prefix:
        items = [(k[len(prefix):], v) for k, v in items if k.startswith(prefix)]

    keys = [k for k, _ in items]
    if any(k.startswith('stem.') or '.blocks.' in k for k in keys):
        rules = _TIMM_RULES
    elif any('.depthwise_conv.' in k or '.pointwise_conv1.' in k for k in keys):
        rules = _MMPRETRAIN_RULES
    else:
        rules = []

    converted = OrderedDict()
    for key, value in items:
        if _HEAD.match(key):
            continue
        key = _apply_rules(key, rules)
        if key.endswith(('.grn.gamma', '.grn.beta')) and value.dim() == 1:
            value = value.reshape(1, 1, 1, -1)
        elif key.endswith(('.pwconv1.weight', '.pwconv2.weight')) and value.dim() == 4:
            value = value.flatten(1)
        converted[key] = value
    return converted


def load_backbone_checkpoint(model: nn.Module, filename: str, prefix: Optional[str] = None,
                             map_location: str = 'cpu', sha256: Optional[str] = None) -> dict:
    """Load ``filename`` (a local path or URL; any layout) into ``model``; return
    dict(missing, unexpected).

    A URL is downloaded once into torch's hub cache (SHA-256 checked against ``sha256``, a hex
    prefix, or the hash in the file name) and loaded weights-only like a local file. Missing
    and unexpected keys are logged in one summary; a shape mismatch raises ``ValueError``
    naming the key and both shapes. A missing local file raises ``FileNotFoundError``.
    """
    from ..compat.safe_checkpoint import fetch
    if str(filename).startswith(('http://', 'https://')):
        filename = fetch(str(filename), hash_prefix=sha256)
    elif '://' not in str(filename) and not osp.isfile(filename):
        raise FileNotFoundError(
            f'Pretrained checkpoint {filename!r} does not exist. Set the backbone\'s '
            f"init_cfg=dict(type='Pretrained', checkpoint=PATH_OR_URL) (or the config's "
            f'load_from) to a file on this machine or a URL, e.g. with --cfg-options '
            f'model.backbone.init_cfg.checkpoint=/path/to/weights.pth')
    state_dict = convert_checkpoint(_load_checkpoint(filename, map_location=map_location),
                                    prefix=prefix)
    own = model.state_dict()
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f'Checkpoint {filename} does not fit this {type(model).__name__} '
                         f'(is it another arch?). Shape mismatch in {len(mismatched)} '
                         f'key(s):\n  ' + '\n  '.join(mismatched))
    result = model.load_state_dict(state_dict, strict=False)
    summary = load_summary(filename, len(state_dict), result.missing_keys,
                           result.unexpected_keys)
    MMLogger.get_current_instance().info(summary)
    return dict(missing=list(result.missing_keys), unexpected=list(result.unexpected_keys))


def load_summary(filename: str, num_loaded: int, missing, unexpected, limit: int = 10) -> str:
    """One readable paragraph about a checkpoint load."""
    lines = [f'Loaded {num_loaded - len(unexpected)} tensors from {filename}.']
    for title, keys in (('missing in checkpoint (kept at init)', missing),
                        ('unexpected in checkpoint (ignored)', unexpected)):
        if keys:
            shown = ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)'
                                               if len(keys) > limit else '')
            lines.append(f'{len(keys)} key(s) {title}: {shown}')
    return '\n'.join(lines)


def check_checkpoint_fits(model: nn.Module, checkpoint, filename, skip_mismatched: bool = False,
                          require_all: bool = False, limit: int = 20) -> None:
    """Raise ``ValueError`` naming the keys and both shapes when ``checkpoint`` (a loaded
    Runner checkpoint or a bare state dict) does not fit ``model``.

    Always an error: no tensor name in common (a checkpoint of another model). Unless
    ``skip_mismatched``: a tensor whose shape differs. With ``require_all``: a model tensor
    missing from the checkpoint (BatchNorm ``num_batches_tracked`` excepted). A leading
    ``module.`` (DDP) is ignored on both sides, as mmengine's loader does.
    """
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    state_dict = extract_state_dict(checkpoint)
    theirs = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()
              if hasattr(v, 'shape')}
    own = model.state_dict()
    name = f'{type(model).__name__}'
    common = [k for k in own if k in theirs]
    if own and theirs and not common:
        raise ValueError(
            f'Checkpoint {filename} shares no tensor name with this {name}: it is a checkpoint '
            f'of another model. Its keys look like {", ".join(list(theirs)[:3])}; the model\'s '
            f'like {", ".join(list(own)[:3])}. Give a checkpoint trained with this config, or '
            f'convert a backbone checkpoint with tools/convert_checkpoint.py --add-prefix '
            f'backbone.')
    mismatched = [f'{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in common if tuple(theirs[k].shape) != tuple(own[k].shape)]
    if mismatched and not skip_mismatched:
        shown = mismatched[:limit] + ([f'... ({len(mismatched) - limit} more)']
                                      if len(mismatched) > limit else [])
        raise ValueError(
            f'Checkpoint {filename} does not fit this {name}: {len(mismatched)} tensor(s) have '
            f'another shape (another arch or number of classes?):\n  ' + '\n  '.join(shown) +
            '\nUse the checkpoint of this config; to fine-tune from it anyway with the '
            'mismatched tensors left at their initial values, pass --skip-mismatched to '
            'tools/train.py (load_from only).')
    missing = [k for k in own if k not in theirs and not k.endswith('num_batches_tracked')]
    if missing and require_all:
        shown = missing[:limit] + ([f'... ({len(missing) - limit} more)']
                                   if len(missing) > limit else [])
        raise ValueError(
            f'Checkpoint {filename} lacks {len(missing)} of the {len(own)} tensors of this '
            f'{name}, which would stay at their initial values:\n  ' + '\n  '.join(shown) +
            '\nGive the checkpoint written by training this config.')
