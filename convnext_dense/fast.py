"""One switch for fast inference: channels-last, bf16/fp16 autocast and ``torch.compile``.

    model = enable_fast_inference(model)            # Python API
    python tools/test.py CONFIG CKPT --fast         # command line

What it does to an mmengine model (detector, segmentor or bare backbone), in place:

- every 4-D conv weight goes to channels-last memory format;
- ``forward`` runs under autocast (bf16 on CPUs with native bf16 support, fp16 on CUDA) and its
  predictions come back as float32, so evaluators see the usual dtypes; mmcv's compiled ops that
  have no low-precision CPU kernels (RoIAlign, NMS) receive float32 inputs;
- the backbone's and neck's ``forward`` are compiled with ``torch.compile``.

The state dict is untouched: the model can still be saved and loaded as usual.
"""
import functools
from typing import Optional

import torch
import torch.nn as nn


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


def _float32_inputs(function):
    """Wrap an op whose kernels take only contiguous float32: convert tensor args."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        args = [_plain_float32(a) for a in args]
        kwargs = {k: _plain_float32(v) for k, v in kwargs.items()}
        with torch.autocast('cpu', enabled=False):
            return function(*args, **kwargs)
    return wrapper


@functools.lru_cache(maxsize=None)
def _protect_mmcv_ops() -> None:
    """mmcv's CPU RoIAlign and NMS kernels take only float32/float64, and RoIAlign reads its
    input as contiguous NCHW (a channels-last map gives wrong features without an error)."""
    import importlib
    nms_module = importlib.import_module('mmcv.ops.nms')  # mmcv.ops.nms is also a function
    roi_align_module = importlib.import_module('mmcv.ops.roi_align')
    roi_align_module.RoIAlign.forward = _float32_inputs(roi_align_module.RoIAlign.forward)
    nms_module.NMSop.apply = _float32_inputs(nms_module.NMSop.apply)


def enable_fast_inference(model: nn.Module, compile: bool = True, low_precision: bool = True,
                          channels_last: bool = True) -> nn.Module:
    """Switch ``model`` (in eval use) to the fast path; returns the same object.

    The first call after ``compile=True`` takes a minute or two on a small CPU (compilation).
    """
    device = next(model.parameters()).device.type
    _protect_mmcv_ops()
    if channels_last:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(
                    memory_format=torch.channels_last)
    dtype = autocast_dtype(device) if low_precision else None
    if dtype is not None:
        forward = model.forward

        @functools.wraps(forward)
        def autocast_forward(*args, **kwargs):
            with torch.autocast(device, dtype=dtype):
                return to_float32(forward(*args, **kwargs))

        model.forward = autocast_forward
    if compile:
        for name in ('backbone', 'neck'):
            part = getattr(model, name, None)
            if part is not None:
                part.forward = torch.compile(part.forward, dynamic=True)
        if not hasattr(model, 'backbone'):
            model.forward = torch.compile(model.forward, dynamic=True)
    model.fast_inference = dict(compile=compile, dtype=str(dtype), channels_last=channels_last)
    return model
