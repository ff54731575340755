"""mmcv's ops on CUDA tensors when mmcv was compiled without CUDA kernels.

For mmcv 2.1.0 built with its ops (``MMCV_WITH_OPS=1``) but without CUDA, so that
``mmcv.ops.get_compiling_cuda_version()`` answers ``'not available'``: the wheel that
``make install`` builds with the GPU hidden, and the one ../shared/gpu/setup.sh builds. Such an
mmcv registers CPU kernels only, and the first CUDA tensor that reaches one of its ops stops
training with ``roi_align_forward_impl: implementation for device cuda:0 not found``.

Every mmcv op calls its kernels through the attribute ``ext_module`` of its ``mmcv.ops`` module
(the compiled module ``mmcv._ext``), looked up at call time. :func:`apply` replaces that
attribute, in the modules listed in :data:`ROUTES` only, by a :class:`RoutedExtension`: a
routed function runs for CUDA tensors and the compiled one for tensors on any other device;
every other attribute is the compiled module's own. The routed functions take the compiled
functions' arguments and write into the buffers mmcv passes, as the kernels do, with the same
numbers (tests/compat/test_mmcv_cuda_ops.py compares them with mmcv's CPU kernels):

- ``mmcv.ops.roi_align``: ``roi_align_forward`` / ``roi_align_backward`` run torchvision's
  RoIAlign kernels (``torch.ops.torchvision.roi_align`` / ``_roi_align_backward``), computing
  in float32 for float16 / bfloat16 tensors. This covers the ``RoIAlign`` layers of the RoI
  extractors and the ``roi_align`` function that mmdet imports into
  ``mmdet.structures.mask.structures`` for the mask targets: both run ``RoIAlignFunction``.
  Only ``pool_mode='avg'`` has a torchvision kernel; ``'max'`` on CUDA raises an error.
- ``mmcv.ops.nms``: ``nms`` runs ``torch.ops.torchvision.nms`` on the boxes in the score order
  of mmcv's CPU kernel (sorted on the CPU, so that equal scores come in the same order). This
  covers ``nms``, ``batched_nms`` (RPN proposals) and mmdet's ``multiclass_nms`` (test-time
  boxes), which all call it.

These are all the mmcv ops that the detection recipes in configs/ reach in training and testing
(Cascade Mask R-CNN / Mask R-CNN: RPN, RoI extractors, mask targets, NMS); the segmentation
recipes (UPerHead, FCNHead, cross-entropy, SyncBN, which is torch's) reach none.

:func:`apply` changes nothing where mmcv was compiled with CUDA (its own kernels stay) or where
torch sees no CUDA device (no CUDA tensor can reach an op). The routed functions work on any
device, so tests call them on CPU tensors.
"""
import functools
import importlib
from typing import Callable, Dict, Sequence

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_FIX = ('build mmcv with its CUDA ops instead (MMCV_CUDA=1 make install, which needs an nvcc '
        'that matches torch.version.cuda)')


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for half-precision tensors (torchvision's CUDA kernels do not all take
    bfloat16), the tensor's own dtype otherwise."""
    return torch.float32 if tensor.dtype in _LOW_PRECISION else tensor.dtype


def _check_avg_pool(pool_mode: int, where: str) -> None:
    if pool_mode != 1:  # mmcv passes 0 for 'max', 1 for 'avg'
        raise NotImplementedError(
            f'{where}: mmcv was compiled without CUDA kernels and convnext_dense routes '
            f"RoIAlign on CUDA to torchvision, which has pool_mode='avg' only; use "
            f"pool_mode='avg' or {_FIX}.")


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width,
                      spatial_scale, sampling_ratio, pool_mode, aligned) -> None:
    """``mmcv._ext.roi_align_forward`` through torchvision: fills ``output`` (K, C, h, w) with
    the average of the bilinear samples in each bin of each RoI (batch index, x1, y1, x2, y2)."""
    _check_avg_pool(pool_mode, 'RoIAlign forward')
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    dtype = _compute_dtype(input)
    with torch.autocast(input.device.type, enabled=False):
        result = torch.ops.torchvision.roi_align(
            input.to(dtype), rois.to(dtype), float(spatial_scale), int(aligned_height),
            int(aligned_width), int(sampling_ratio), bool(aligned))
    output.copy_(result)


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height,
                       aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned) -> None:
    """``mmcv._ext.roi_align_backward`` through torchvision: adds the gradient with respect to
    the input feature map into ``grad_input`` (N, C, H, W), as mmcv's kernels do."""
    _check_avg_pool(pool_mode, 'RoIAlign backward')
    import torchvision  # noqa: F401
    dtype = _compute_dtype(grad_output)
    batch, channels, height, width = grad_input.shape
    with torch.autocast(grad_output.device.type, enabled=False):
        grad = torch.ops.torchvision._roi_align_backward(
            grad_output.to(dtype), rois.to(dtype), float(spatial_scale), int(aligned_height),
            int(aligned_width), batch, channels, height, width, int(sampling_ratio),
            bool(aligned))
    grad_input.add_(grad)


def nms(boxes, scores, iou_threshold, offset) -> torch.Tensor:
    """``mmcv._ext.nms`` through torchvision: indices (int64) of the kept boxes, highest score
    first. As mmcv's CPU kernel: the scores are sorted on the CPU with the same call, so equal
    scores come in its order (a sort on the GPU orders them differently); a box is dropped when
    its IoU with a kept box exceeds the threshold (compared in float32); ``offset`` (0 or 1) is
    added to widths and heights. torchvision gets the boxes in that order, with their ranks as
    scores."""
    import torchvision  # noqa: F401
    dtype = _compute_dtype(boxes)
    order = scores.detach().to('cpu', _compute_dtype(scores)).sort(0, descending=True)[1]
    order = order.to(boxes.device)
    boxes = boxes.detach().to(dtype)[order]
    if offset:
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:] + offset], dim=1)
    ranks = torch.arange(len(order), 0, -1, dtype=dtype, device=boxes.device)
    # the kernel takes a C++ float: the threshold as float32 gives the same comparisons
    threshold = torch.tensor(float(iou_threshold), dtype=torch.float32).item()
    with torch.autocast(boxes.device.type, enabled=False):
        return order[torch.ops.torchvision.nms(boxes, ranks, threshold)]


# mmcv.ops module -> the ext functions it calls that we route
ROUTES: Dict[str, Dict[str, Callable]] = {
    'mmcv.ops.roi_align': dict(roi_align_forward=roi_align_forward,
                               roi_align_backward=roi_align_backward),
    'mmcv.ops.nms': dict(nms=nms),
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
