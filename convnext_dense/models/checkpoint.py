"""Reading ConvNeXt checkpoints of every common layout into our (the official) key layout.

:data:`LAYOUTS` is the table :func:`convert_checkpoint` works from: per layout, the key that
recognises it, the sub-model it takes by default, its renaming rules, and the keys that are not
backbone weights (dropped). The first layout whose marker some key matches is used (only
``backbone.`` keys are looked at when there are any):

- FCMAE (sparse): the official ConvNeXt-V2 FCMAE pre-training checkpoints (MinkowskiEngine
  encoder). Facts from facebookresearch/ConvNeXt-V2 models/fcmae.py (``FCMAE``: ``encoder``,
  ``proj``, ``mask_token``, ``decoder``, ``pred``), models/convnextv2_sparse.py and
  models/utils.py (``MinkowskiLayerNorm.ln``, ``MinkowskiGRN`` gamma / beta of shape (1, C)),
  MinkowskiEngine's ``MinkowskiConvolution`` (``kernel`` (K, C_in, C_out), ``bias`` (1, C_out))
  and ``MinkowskiDepthwiseConvolution`` (``kernel`` (K, C), ``bias`` (1, C)), ``MinkowskiLinear``
  (``.linear``). K = k * k is the kernel volume; its index runs over the kernel offsets with the
  first spatial axis (H) fastest: index = kw * k + kh. That order is what the official
  remapping, utils.py ``remap_checkpoint_keys`` (used by main_finetune.py), does
  (``permute`` to (C_out, C_in, K), ``reshape`` to (.., k, k), then ``transpose(3, 2)``), and
  what MinkowskiEngine's src/kernel_region.hpp ``kernel_region_iterator::operator++`` enumerates
  (axis 0 of the coordinates after the batch index, which ``to_sparse`` /
  ``dense_coordinates`` take from dim 2 = H, incremented first). Odd kernels are centred
  (offsets -k//2..k//2), even ones start at the site (0..k-1), as a dense Conv2d with padding
  k//2 resp. 0. Decoder, mask token, ``proj`` and ``pred`` are dropped.
- FCMAE (dense): the same model with dense names and shapes, e.g. the files released as
  ``convnextv2/pt_only/convnextv2_*_fcmae.pt``, which (facebookresearch/ConvNeXt-V2 issues #47,
  #65) hold ``{'model': ...}`` with ``downsample_layers.1.1.weight`` (C_out, C_in, 2, 2),
  ``dwconv.weight`` (C, 1, 7, 7) and (C,) biases, no ``encoder.``; GRN parameters may still be
  (1, C) (main_finetune.py's ``remap_checkpoint_keys`` adds the two leading dims). Recognised
  by a top-level ``mask_token`` / ``decoder.N.`` key (``encoder.`` is taken when present);
  without them such a file is simply the official layout.
- open_clip ConvNeXt: a timm ConvNeXt under ``visual.trunk.`` (its ``head.norm`` kept by
  open_clip's ``TimmModel``), the projection under ``visual.head.`` (``proj`` or ``mlp``) and
  the text tower at the top level; only the trunk is taken, with the timm rules.
- timm: ``stem.0``, ``stages.i.downsample.k``, ``stages.i.blocks.j.conv_dw``, ``mlp.fc1``,
  ``mlp.grn.weight``; also timm's hub copies of the CLIP (``convnext_*.clip_laion2b*``) and
  DINOv3 (``convnext_*.dinov3_lvd1689m``) weights, which timm stores in its own layout.
- mmpretrain / mmdet / mmseg: ``backbone.`` prefix, ``depthwise_conv``, ``pointwise_conv1``,
  ``grn.gamma`` of shape (C,).
- DINOv3 ConvNeXt (facebookresearch/dinov3 dinov3/models/convnext.py): the official V1 layout
  plus ``norms.{0..3}`` (``Identity`` x 3 and the final ``norm`` again, so ``norms.3.*``
  repeats ``norm.*``); both are dropped, as timm's ``checkpoint_filter_fn`` does.
- official ImageNet (``{'model': {...}}``) and official dense (``backbone.`` prefix): identity.

Classifier-head keys (``head.*``, the final ``norm.*``, timm ``norm_pre``) are dropped.
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

_CONTAINER_KEYS = ('state_dict', 'model', 'module', 'model_state')
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
    gave), before any converter copies it."""
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        return
    held = value.untyped_storage().nbytes() // max(value.element_size(), 1)
    if value.numel() > held:
        raise ValueError(f'{key}: a tensor of shape {tuple(value.shape)} (stride '
                         f'{tuple(value.stride())}) views {value.numel()} elements of a storage '
                         f'of {held}; refusing to copy it (a damaged or crafted checkpoint).')


def sparse_to_dense_kernel(kernel: torch.Tensor, key: str = 'kernel') -> torch.Tensor:
    """A MinkowskiEngine 2-D kernel as a dense ``nn.Conv2d`` weight.

    (K, C_in, C_out) (``MinkowskiConvolution``) -> (C_out, C_in, k, k); (K, C)
    (``MinkowskiDepthwiseConvolution``) -> (C, 1, k, k); K = k * k with kernel-volume index
    kw * k + kh (see the module docstring), so ``weight[o, i, kh, kw] = kernel[kw * k + kh, i, o]``.
    """
    check_materialisable(kernel, key)
    if kernel.dim() == 2:
        kernel = kernel.unsqueeze(1)  # depthwise: (K, 1, C)
    if kernel.dim() != 3:
        raise ValueError(f'{key}: a sparse (MinkowskiEngine) kernel has 2 or 3 dims '
                         f'(K, C) / (K, C_in, C_out), got shape {tuple(kernel.shape)}.')
    volume, c_in, c_out = kernel.shape
    size = math.isqrt(volume)
    if size * size != volume:
        raise ValueError(f'{key}: kernel volume {volume} (shape {tuple(kernel.shape)}) is not a '
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
    return [(k[len('module.'):] if k.startswith('module.') else k, v)
            for k, v in state_dict.items()]


def detect_layout(checkpoint, prefix: Optional[str] = None) -> Layout:
    """The first :data:`LAYOUTS` entry whose marker a key of ``checkpoint`` (or of its state
    dict) matches. Only keys under ``prefix`` (default ``backbone.``) are looked at when there
    are any, so e.g. a detector's head keys do not decide its backbone's layout."""
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
    raise ValueError(f'Unknown checkpoint layout {name!r}; known: '
                     f'{", ".join(repr(x.name) for x in LAYOUTS)}.')


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


def convert_checkpoint(state_dict: Dict[str, torch.Tensor], prefix: Optional[str] = None,
                       layout: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Convert a ConvNeXt state dict of any layout in :data:`LAYOUTS` to ours.

    ``layout`` names a :data:`LAYOUTS` entry (default: recognised from the keys). ``prefix``
    selects a sub-model (default: the layout's, e.g. ``backbone.`` or FCMAE's ``encoder.``,
    when such keys exist, else all keys). A leading DDP ``module.`` is stripped. Shapes: GRN
    parameters become (1, 1, 1, C); 1x1-conv MLP weights (C_out, C_in, 1, 1) become Linear
    weights (C_out, C_in); sparse kernels become dense Conv2d weights.
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
    """Load ``filename`` (a local path or URL; any layout) into ``model``; return
    dict(missing, unexpected).

    A URL is downloaded once into torch's hub cache (SHA-256 checked against ``sha256``, a hex
    prefix, or the hash in the file name) and loaded weights-only like a local file; a local
    file is checked against ``sha256`` too when it is given. Missing
    and unexpected keys are logged in one summary; a shape mismatch raises ``ValueError``
    naming the key and both shapes. A missing local file raises ``FileNotFoundError``.
    """
    from ..compat.safe_checkpoint import _resolve, fetch, verify_sha256
    source = str(filename)
    filename = _resolve(source)  # torchvision://, open-mmlab://, ... -> URL or path
    named_scheme = filename != source
    if filename.startswith(('http://', 'https://')):
        filename = fetch(filename, hash_prefix=sha256)
    elif '://' in filename:
        raise ValueError(f'Pretrained checkpoint {filename!r}: unknown URL scheme; give a local '
                         f'path or an http(s):// URL')
    elif not osp.isfile(filename):
        raise FileNotFoundError(
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
    own = model.state_dict()
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f'Checkpoint {filename} (layout: {layout.name}) does not fit this '
                         f'{type(model).__name__} (is it another arch?). Shape mismatch in '
                         f'{len(mismatched)} key(s):\n  ' + '\n  '.join(mismatched))
    result = model.load_state_dict(state_dict, strict=False)
    summary = load_summary(filename, len(state_dict), result.missing_keys,
                           result.unexpected_keys, layout=layout.name)
    MMLogger.get_current_instance().info(summary)
    return dict(missing=list(result.missing_keys), unexpected=list(result.unexpected_keys))


def load_summary(filename: str, num_loaded: int, missing, unexpected, limit: int = 10,
                 layout: Optional[str] = None) -> str:
    """One readable paragraph about a checkpoint load (``layout``: the :data:`LAYOUTS` name
    it was read as)."""
    read_as = f' (layout: {layout})' if layout else ''
    lines = [f'Loaded {num_loaded - len(unexpected)} tensors from {filename}{read_as}.']
    for title, keys in (('missing in checkpoint (kept at init)', missing),
                        ('unexpected in checkpoint (ignored)', unexpected)):
        if keys:
            shown = ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)'
                                               if len(keys) > limit else '')
            lines.append(f'{len(keys)} key(s) {title}: {shown}')
    return '\n'.join(lines)


def check_checkpoint_fits(model: nn.Module, checkpoint, filename, skip_mismatched: bool = False,
                          require_all: bool = False, limit: int = 20,
                          partial_hint: bool = False) -> None:
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
            '\nGive the checkpoint written by training this config' +
            ('; to fine-tune from it anyway with those tensors left at their initial values, '
             'pass --skip-mismatched to tools/train.py.' if partial_hint else '.'))
