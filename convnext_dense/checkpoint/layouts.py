"""ConvNeXt checkpoints of every common layout read into our (the official) key layout.

:data:`LAYOUTS` lists, per layout, the key that recognises it, the sub-model it takes by
default, its renaming rules and the keys that are not backbone weights: FCMAE (sparse, from
MinkowskiEngine, and dense), open_clip, timm, mmpretrain / mmdet / mmseg, DINOv3 and the
official ImageNet / dense layouts. :func:`detect_layout` picks the first whose marker a key
matches (only ``backbone.`` keys are looked at when there are any), :func:`convert_checkpoint`
renames and reshapes, :func:`sparse_to_dense_kernel` turns a sparse kernel into a dense
Conv2d weight, and :func:`load_backbone_checkpoint` loads any of them into a backbone.
Classifier-head keys are dropped. Where each layout's facts come from: docs/checkpoints.md.
"""
import math
import os.path as osp
import re
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import _load_checkpoint

from ..errors import CheckpointMismatchError, ConfigError, InputError, MissingFileError
from .fit import extract_state_dict, fit_report, load_summary, strip_module_prefix
from .io import _resolve, fetch, verify_sha256

_TIMM_RULES = (  # (pattern, replacement) applied in order to timm keys
    (r'^stem\.', 'downsample_layers.0.'),
    (r'^stages\.(\d+)\.downsample\.', r'downsample_layers.\1.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.'),
    (r'\.conv_dw\.', '.dwconv.'),
    (r'\.mlp\.fc1\.', '.pwconv1.'),
    (r'\.mlp\.fc2\.', '.pwconv2.'),
    (r'\.mlp\.grn\.weight$', '.grn.gamma'),
    (r'\.mlp\.grn\.bias$', '.grn.beta'),
)
_MMPRETRAIN_RULES = (
    (r'\.depthwise_conv\.', '.dwconv.'),
    (r'\.pointwise_conv1\.', '.pwconv1.'),
    (r'\.pointwise_conv2\.', '.pwconv2.'),
)
_SPARSE_RULES = (  # MinkowskiLayerNorm.ln / MinkowskiLinear.linear wrappers; kernel -> weight
    (r'\.(ln|linear)\.(weight|bias)$', r'.\2'),
    (r'\.kernel$', '.weight'),
)
_HEAD = r'^(head\.|norm\.|norm_pre\.|fc\.)'
_DINOV3_EXTRA = r'^(norms\.\d+\.|projectors\.)'  # repeated final norm; EUPE projector heads
_FCMAE_DECODER = r'^(decoder\.|proj\.|pred\.|mask_token$)'


def check_materialisable(value: torch.Tensor, key: str) -> None:
    """Raise ``ValueError`` when ``value`` views more elements than its storage holds (a
    broadcast or overlapping view: making it contiguous would allocate more than the file
    gave), before any converter copies it.

    Args:
        value (torch.Tensor): a tensor from a checkpoint (anything else passes).
        key (str): its key, for the message.
    """
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        return
    held = value.untyped_storage().nbytes() // max(value.element_size(), 1)
    if value.numel() > held:
        raise InputError(f'{key}: a tensor of shape {tuple(value.shape)} (stride '
                         f'{tuple(value.stride())}) views {value.numel()} elements of a storage '
                         f'of {held}; refusing to copy it (a damaged or crafted checkpoint).')


def sparse_to_dense_kernel(kernel: torch.Tensor, key: str = 'kernel') -> torch.Tensor:
    """A MinkowskiEngine 2-D kernel as a dense ``nn.Conv2d`` weight.

    (K, C_in, C_out) (``MinkowskiConvolution``) -> (C_out, C_in, k, k); (K, C)
    (``MinkowskiDepthwiseConvolution``) -> (C, 1, k, k); K = k * k with kernel-volume index
    kw * k + kh (docs/checkpoints.md), so ``weight[o, i, kh, kw] = kernel[kw * k + kh, i, o]``.

    Args:
        kernel (torch.Tensor): the sparse kernel.
        key (str): its key, for messages.

    Returns:
        torch.Tensor: the dense weight.
    """
    check_materialisable(kernel, key)
    if kernel.dim() == 2:
        kernel = kernel.unsqueeze(1)  # depthwise: (K, 1, C)
    if kernel.dim() != 3:
        raise InputError(f'{key}: a sparse (MinkowskiEngine) kernel has 2 or 3 dims '
                         f'(K, C) / (K, C_in, C_out), got shape {tuple(kernel.shape)}.')
    volume, c_in, c_out = kernel.shape
    size = math.isqrt(volume)
    if size * size != volume:
        raise InputError(f'{key}: kernel volume {volume} (shape {tuple(kernel.shape)}) is not a '
                         f'square k * k; only square 2-D kernels convert to a dense Conv2d.')
    # (K, ...) -> (kw, kh, C_in, C_out) -> (C_out, C_in, kh, kw)
    return kernel.reshape(size, size, c_in, c_out).permute(3, 2, 1, 0).contiguous()


def _sparse_values(key: str, value: torch.Tensor) -> torch.Tensor:
    """FCMAE tensors (keyed as stored) in dense shapes: kernels, and (1, C) biases -> (C,)."""
    if key.endswith('.kernel'):
        return sparse_to_dense_kernel(value, key)
    if key.endswith('.bias') and value.dim() == 2 and value.shape[0] == 1:
        return value.reshape(-1)
    return value


class Layout(NamedTuple):
    """One checkpoint layout: recognised when some key (``module.`` stripped) matches
    ``marker``; by default only keys under ``prefix`` are taken (when any key has it); keys
    (under the prefix) matching ``drop`` are not backbone weights; ``rules`` rename the rest in
    order; ``values`` (stored key, tensor) -> tensor reshapes where the layouts differ."""
    name: str
    marker: str
    prefix: str
    rules: tuple = ()
    drop: str = _HEAD
    values: Optional[Callable[[str, torch.Tensor], torch.Tensor]] = None


LAYOUTS: List[Layout] = [
    Layout('FCMAE (sparse)', marker=r'\.kernel$', prefix='encoder.', rules=_SPARSE_RULES,
           drop=f'{_HEAD}|{_FCMAE_DECODER}', values=_sparse_values),
    Layout('FCMAE (dense)', marker=r'^(mask_token$|decoder\.\d+\.)',
           prefix='encoder.', drop=f'{_HEAD}|{_FCMAE_DECODER}'),
    Layout('open_clip (timm trunk)', marker=r'^visual\.trunk\.', prefix='visual.trunk.',
           rules=_TIMM_RULES),
    Layout('timm', marker=r'(^|\.)stem\.\d+\.|\.blocks\.\d+\.', prefix='backbone.',
           rules=_TIMM_RULES),
    Layout('mmpretrain', marker=r'\.(depthwise_conv|pointwise_conv1)\.', prefix='backbone.',
           rules=_MMPRETRAIN_RULES),
    Layout('DINOv3', marker=r'(^|\.)norms\.\d+\.', prefix='backbone.',
           drop=f'{_HEAD}|{_DINOV3_EXTRA}'),
    Layout('official', marker=r'', prefix='backbone.'),
]


def _strip_ddp(state_dict: Dict[str, torch.Tensor]) -> list:
    return [(strip_module_prefix(k), v) for k, v in state_dict.items()]


def detect_layout(checkpoint, prefix: Optional[str] = None) -> Layout:
    """The first :data:`LAYOUTS` entry whose marker a key of ``checkpoint`` (or of its state
    dict) matches. Only keys under ``prefix`` (default ``backbone.``) are looked at when there
    are any, so e.g. a detector's head keys do not decide its backbone's layout.

    Args:
        checkpoint (dict): a loaded checkpoint or state dict.
        prefix (str, optional): the keys to look at (default ``backbone.``).

    Returns:
        Layout: the recognised layout.
    """
    keys = [k for k, _ in _strip_ddp(extract_state_dict(checkpoint))]
    under = 'backbone.' if prefix is None else prefix
    examined = [k for k in keys if under and k.startswith(under)] or keys
    for layout in LAYOUTS:
        if any(re.search(layout.marker, k) for k in examined):
            return layout
    return LAYOUTS[-1]  # no keys at all


def _layout_named(name: str) -> Layout:
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise ConfigError(f'Unknown checkpoint layout {name!r}; known: '
                      f'{", ".join(repr(x.name) for x in LAYOUTS)}.')


def _apply_rules(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def convert_checkpoint(state_dict: Dict[str, torch.Tensor], prefix: Optional[str] = None,
                       layout: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Convert a ConvNeXt state dict of any layout in :data:`LAYOUTS` to ours.

    ``layout`` names a :data:`LAYOUTS` entry (default: recognised from the keys). ``prefix``
    selects a sub-model (default: the layout's, e.g. ``backbone.`` or FCMAE's ``encoder.``,
    when such keys exist, else all keys). A leading DDP ``module.`` is stripped. Shapes: GRN
    parameters become (1, 1, 1, C); 1x1-conv MLP weights (C_out, C_in, 1, 1) become Linear
    weights (C_out, C_in); sparse kernels become dense Conv2d weights.

    Args:
        state_dict (dict): a loaded checkpoint or state dict.
        prefix (str, optional): the sub-model to take.
        layout (str, optional): a :data:`LAYOUTS` name.

    Returns:
        OrderedDict[str, torch.Tensor]: the backbone's state dict in our key names.
    """
    state_dict = extract_state_dict(state_dict)
    items = _strip_ddp(state_dict)
    layout = _layout_named(layout) if layout else detect_layout(state_dict, prefix)
    if prefix is None and any(k.startswith(layout.prefix) for k, _ in items):
        prefix = layout.prefix
    if prefix:
        items = [(k[len(prefix):], v) for k, v in items if k.startswith(prefix)]

    converted = OrderedDict()
    for stored, value in items:
        if re.match(layout.drop, stored):
            continue
        key = _apply_rules(stored, layout.rules)
        check_materialisable(value, stored)
        if layout.values is not None:
            value = layout.values(stored, value)
        if key.endswith(('.grn.gamma', '.grn.beta')) and value.dim() != 4:
            value = value.reshape(1, 1, 1, -1)
        elif key.endswith(('.pwconv1.weight', '.pwconv2.weight')) and value.dim() == 4:
            value = value.flatten(1)
        converted[key] = value
    return converted


def load_backbone_checkpoint(model: nn.Module, filename: str, prefix: Optional[str] = None,
                             map_location: str = 'cpu', sha256: Optional[str] = None) -> dict:
    """Load a backbone checkpoint of any layout into ``model``.

    A URL is downloaded once into torch's hub cache and loaded weights-only like a local file;
    its SHA-256 (or a local file's, when ``sha256`` is given) is checked. Missing and
    unexpected keys (:func:`~.fit.fit_report`) are logged in one summary.

    Args:
        model (nn.Module): the backbone.
        filename (str): a local path, an ``http(s)://`` URL or an mmengine named scheme.
        prefix (str, optional): the sub-model to take (default: the layout's).
        map_location (str): where tensors are loaded.
        sha256 (str, optional): a hex prefix of the file's SHA-256.

    Returns:
        dict: ``missing`` and ``unexpected``, lists of keys.

    Raises:
        ValueError: a tensor's shape differs (the key and both shapes are named).
        FileNotFoundError: a local file does not exist.
    """
    source = str(filename)
    filename = _resolve(source)  # torchvision://, open-mmlab://, ... -> URL or path
    named_scheme = filename != source
    if filename.startswith(('http://', 'https://')):
        filename = fetch(filename, hash_prefix=sha256)
    elif '://' in filename:
        raise ConfigError(f'Pretrained checkpoint {filename!r}: unknown URL scheme; give a '
                          f'local path or an http(s):// URL')
    elif not osp.isfile(filename):
        raise MissingFileError(
            f'Pretrained checkpoint {filename!r} does not exist. Set the backbone\'s '
            f"init_cfg=dict(type='Pretrained', checkpoint=PATH_OR_URL) (or the config's "
            f'load_from) to a file on this machine or a URL, e.g. with --cfg-options '
            f'model.backbone.init_cfg.checkpoint=/path/to/weights.pth')
    else:
        verify_sha256(filename, sha256)
    # a named scheme goes through mmengine's loader again (mmcls:// renames keys there)
    checkpoint = _load_checkpoint(source if named_scheme else filename,
                                  map_location=map_location)
    layout = detect_layout(checkpoint, prefix)
    state_dict = convert_checkpoint(checkpoint, prefix=prefix, layout=layout.name)
    report = fit_report(model, state_dict)
    if report.mismatched:
        raise CheckpointMismatchError(
            f'Checkpoint {filename} (layout: {layout.name}) does not fit this '
            f'{report.model_name} (is it another arch?). Shape mismatch in '
            f'{len(report.mismatched)} key(s):\n  ' + '\n  '.join(report.mismatch_lines()))
    model.load_state_dict(state_dict, strict=False)
    MMLogger.get_current_instance().info(load_summary(
        filename, len(state_dict), report.missing, report.unexpected, layout=layout.name))
    return dict(missing=list(report.missing), unexpected=list(report.unexpected))
