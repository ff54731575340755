"""Route mmcv's ops on CUDA tensors to torch / torchvision when mmcv has no CUDA kernels.

For mmcv 2.1.0 built with its ops but without CUDA (``get_compiling_cuda_version()`` answers
``'not available'``), which registers CPU kernels only. :func:`apply` replaces the
``ext_module`` attribute of the mmcv.ops modules in :data:`ROUTES` by a
:class:`RoutedExtension` that runs :mod:`convnext_dense.ops.mmcv_kernels` for CUDA tensors and
mmcv's compiled kernels for all others. It changes nothing where mmcv has CUDA kernels or torch
sees no CUDA device. Why and what each route covers: docs/gpu.md.
"""
import functools
import importlib
from typing import Callable, Dict, Sequence

import torch

from ..ops import mmcv_kernels as kernels

# mmcv.ops module -> the ext functions it calls that we route
ROUTES: Dict[str, Dict[str, Callable]] = {
    'mmcv.ops.roi_align': dict(roi_align_forward=kernels.roi_align_forward,
                               roi_align_backward=kernels.roi_align_backward),
    'mmcv.ops.nms': dict(nms=kernels.nms),
    'mmcv.ops.multi_scale_deform_attn': dict(
        ms_deform_attn_forward=kernels.ms_deform_attn_forward,
        ms_deform_attn_backward=kernels.ms_deform_attn_backward),
    'mmcv.ops.focal_loss': dict(sigmoid_focal_loss_forward=kernels.sigmoid_focal_loss_forward,
                                sigmoid_focal_loss_backward=kernels.sigmoid_focal_loss_backward),
}


class RoutedExtension:
    """Stands in for ``mmcv._ext`` as one mmcv.ops module's ``ext_module``: each function in
    ``routes`` runs the routed function when its first argument is a tensor on one of
    ``device_types`` and the compiled function otherwise; all other attributes are those of
    ``compiled``."""

    def __init__(self, compiled, routes: Dict[str, Callable],
                 device_types: Sequence[str] = ('cuda',)):
        self.compiled = compiled
        self.device_types = tuple(device_types)
        for name, routed in routes.items():
            setattr(self, name, self._dispatch(getattr(compiled, name), routed))

    def _dispatch(self, compiled: Callable, routed: Callable) -> Callable:
        @functools.wraps(routed)
        def dispatch(*args, **kwargs):
            first = args[0] if args else next(iter(kwargs.values()))
            function = routed if first.device.type in self.device_types else compiled
            return function(*args, **kwargs)
        return dispatch

    def __getattr__(self, name: str):
        if 'compiled' not in self.__dict__:  # half-built (copy, pickle)
            raise AttributeError(name)
        return getattr(self.__dict__['compiled'], name)

    def __repr__(self) -> str:
        return f'RoutedExtension({self.compiled!r}, device_types={self.device_types})'


def mmcv_has_cuda_ops() -> bool:
    """Whether the installed mmcv was compiled with CUDA kernels."""
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version() != 'not available'


def needed() -> bool:
    """A CUDA device is visible and mmcv has ops, but no CUDA kernels for them."""
    if not torch.cuda.is_available():
        return False
    try:
        return not mmcv_has_cuda_ops()
    except ImportError:  # mmcv without compiled ops: nothing to route
        return False


def install(device_types: Sequence[str] = ('cuda',)) -> None:
    """Put a :class:`RoutedExtension` in place of ``ext_module`` in each module of
    :data:`ROUTES` (once)."""
    for module_name, routes in ROUTES.items():
        module = importlib.import_module(module_name)
        if not isinstance(module.ext_module, RoutedExtension):
            module.ext_module = RoutedExtension(module.ext_module, routes, device_types)


def apply() -> None:
    """Route the ops of :data:`ROUTES` on CUDA tensors, only where :func:`needed`."""
    if needed():
        install()
