"""One switch for fast inference: channels-last, malloc tuning, autocast, ``torch.compile``.

    model = enable_fast_inference(model)            # Python API
    python tools/test.py CONFIG CKPT --fast         # command line

In place, on one mmengine model (detector, segmentor or bare backbone): conv weights go
channels-last; on the CPU glibc's malloc keeps freed memory (:func:`keep_freed_memory`);
backbone, neck and heads run under bf16 / fp16 autocast and hand float32 on, so that box
arithmetic, NMS and evaluators see the usual dtypes (:func:`low_precision_regions`); mmcv's
``RoIAlign`` layers become :class:`FastRoIAlign` (float32 NCHW, torchvision's kernel over
several CPU threads); where autocast applies, backbone and neck are ``torch.compile``d. The
state dict is untouched and no class or function of mmcv or mmdet is replaced. Measurements:
BENCHMARKS.md.
"""
import ctypes
import functools
from typing import List, Optional, Union

import torch
import torch.nn as nn
from mmcv.ops import RoIAlign

from ..ops import roi_align


def bf16_supported(device: str = 'cpu') -> bool:
    """Whether bf16 matmuls run natively (AVX-512 BF16 / AMX on CPU, Ampere+ on CUDA)."""
    if device == 'cuda':
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(device: str) -> Optional[torch.dtype]:
    """The low-precision dtype the fast path uses on ``device``, or None for fp32."""
    if device == 'cuda':
        return torch.bfloat16 if bf16_supported('cuda') else torch.float16
    return torch.bfloat16 if bf16_supported('cpu') else None


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process instead of returning it to the OS.

    By default every allocation above 32 MiB (a ConvNeXt-T activation at 800x1216 is 23-93 MiB)
    is a fresh ``mmap`` and its pages fault in on first touch, at each forward; freed heap tops
    are trimmed too. This allocates from the heap only and never trims, so a repeated forward
    reuses warm pages: 1.1-1.4x faster inference on a 2-core CPU (BENCHMARKS.md). The price:
    the process keeps its peak memory until it exits. Process-wide and one-way.

    Returns:
        bool: whether it was applied (False, changing nothing, where the C library is not
        glibc).
    """
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    # glibc only: musl's mallopt is a stub that does nothing, macOS has none
    if not (hasattr(libc, 'gnu_get_libc_version') and hasattr(libc, 'mallopt')):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


def to_float32(obj):
    """Cast every low-precision floating tensor inside ``obj`` (lists, dicts, data elements)
    to float32, in place where possible."""
    from mmengine.structures import BaseDataElement
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if isinstance(obj, BaseDataElement):
        for key, value in list(obj.items()):
            setattr(obj, key, to_float32(value))
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float32(v) for v in obj)
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    return obj


def _plain_float32(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float().contiguous()
    return value


class FastRoIAlign(RoIAlign):
    """mmcv's ``RoIAlign`` as the fast path runs it: inputs as contiguous float32 (mmcv's CPU
    kernel takes only float32/float64 and reads its input as NCHW: a channels-last map gives
    wrong features without an error), outside autocast, the output back in the input map's
    dtype (mmdet writes it into a buffer of that dtype); on the CPU with ``pool_mode='avg'``,
    torchvision's kernel with the RoIs split over ``torch.get_num_threads()`` threads
    (bit-identical to mmcv's kernel; speed in tools/analysis/benchmark.py)."""

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        dtype = input.dtype
        input, rois = _plain_float32(input), _plain_float32(rois)
        with torch.autocast(input.device.type, enabled=False):
            if input.device.type == 'cpu' and self.pool_mode == 'avg':
                output = roi_align(input, rois, self.output_size, self.spatial_scale,
                                   self.sampling_ratio, self.aligned, torch.get_num_threads())
            else:
                output = super().forward(input, rois)
        return output.to(dtype)


def use_fast_roi_align(model: nn.Module) -> int:
    """Turn the mmcv ``RoIAlign`` layers inside ``model`` into ``FastRoIAlign`` layers (same
    state, same arguments; the instances' class changes, no other model's layers and not
    mmcv's class). Returns how many were changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, RoIAlign) and not isinstance(module, FastRoIAlign):
            module.__class__ = FastRoIAlign
            changed += 1
    return changed


def low_precision_regions(model: nn.Module) -> List[nn.Module]:
    """The modules whose ``forward`` computes network outputs from features: backbone, neck and
    every head (a module whose class name ends in ``Head``: RPN, bbox, mask, decode heads).
    A bare backbone is one region. Post-processing (anchors, box decoding, NMS, resizing) runs
    outside them, in float32: mmdet builds anchors in the dtype of the head's outputs, and bf16
    coordinates are only 4-8 pixels apart at 1000-2000 pixels."""
    if not hasattr(model, 'backbone'):
        return [model]
    regions = [part for part in (model.backbone, getattr(model, 'neck', None)) if part is not None]
    return regions + [m for m in model.modules() if type(m).__name__.endswith('Head')]


def _autocast_forward(module: nn.Module, device: str, dtype: torch.dtype) -> None:
    """Run ``module.forward`` under autocast to ``dtype``; its outputs come back as float32."""
    forward = module.forward

    @functools.wraps(forward)
    def autocast_forward(*args, **kwargs):
        with torch.autocast(device, dtype=dtype):
            return to_float32(forward(*args, **kwargs))

    module.forward = autocast_forward


def _contiguous_outputs(neck: nn.Module) -> None:
    """Hand on the neck's (channels-last) maps in NCHW layout. RoIAlign reads NCHW: converting
    once per image beats a copy at each of its calls (1.2x on Cascade Mask R-CNN,
    BENCHMARKS.md)."""
    forward = neck.forward

    @functools.wraps(forward)
    def contiguous_forward(*args, **kwargs):
        return tuple(out.contiguous() for out in forward(*args, **kwargs))

    neck.forward = contiguous_forward


def enable_fast_inference(model: nn.Module, compile: Union[bool, str] = 'auto',
                          low_precision: Union[bool, torch.dtype] = True,
                          channels_last: bool = True, keep_memory: bool = True) -> nn.Module:
    """Switch ``model`` (in eval use) to the fast path; returns the same object.

    ``low_precision=True`` autocasts to what the hardware runs natively (:func:`autocast_dtype`),
    ``False`` keeps fp32, a dtype forces it (e.g. ``torch.bfloat16`` on a CPU without native
    bf16: slow, but it shows the accuracy cost).
    ``compile='auto'`` compiles the backbone and neck only where autocast applies (bf16 on the
    CPU, CUDA); ``True`` always, ``False`` never. The first call after compiling takes a minute
    or two on a small CPU. ``keep_memory`` calls :func:`keep_freed_memory` on the CPU.
    """
    device = next(model.parameters()).device.type
    use_fast_roi_align(model)
    if channels_last:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(
                    memory_format=torch.channels_last)
    kept_memory = keep_memory and device == 'cpu' and keep_freed_memory()
    if isinstance(low_precision, torch.dtype):
        dtype = low_precision
    else:
        dtype = autocast_dtype(device) if low_precision else None
    if dtype is not None:
        for region in low_precision_regions(model):
            _autocast_forward(region, device, dtype)
    if channels_last and hasattr(model, 'roi_head') and getattr(model, 'neck', None) is not None:
        _contiguous_outputs(model.neck)
    if compile == 'auto':
        compile = dtype is not None
    if compile:
        for name in ('backbone', 'neck'):
            part = getattr(model, name, None)
            if part is not None:
                part.forward = torch.compile(part.forward, dynamic=True)
        if not hasattr(model, 'backbone'):
            model.forward = torch.compile(model.forward, dynamic=True)
    model.fast_inference = dict(compile=bool(compile), dtype=str(dtype),
                                channels_last=channels_last, keep_freed_memory=kept_memory)
    return model
