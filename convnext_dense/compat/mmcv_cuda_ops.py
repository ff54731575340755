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
numbers (tests/compat/test_mmcv_cuda_ops.py compares them with mmcv's CPU kernels; the
deformable attention and the focal loss, which have none there, with mmcv's PyTorch path and
explicit loops, and with mmdet's own focal loss):

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
- ``mmcv.ops.multi_scale_deform_attn``: ``ms_deform_attn_forward`` runs mmcv's own
  ``multi_scale_deformable_attn_pytorch`` (``grid_sample``: bilinear, zeros outside the map,
  ``align_corners=False``: the kernel's sampling), ``ms_deform_attn_backward`` its gradients by
  torch.autograd on the recomputed forward, in float32 for float16 / bfloat16 tensors. This
  covers ``MultiScaleDeformableAttention``, which runs ``MultiScaleDeformableAttnFunction``
  for every CUDA ``value`` (the Mask2Former pixel decoder, the DINO encoder and decoder). As
  with the kernel, the function keeps only its inputs for the backward; the recomputation
  holds one layer's sampled values (bs * num_heads * head_dims * num_queries * num_levels *
  num_points) for a moment, and it is slower than the kernel (not measured). The one
  difference: a sample exactly one pixel outside the map (``x * w - 0.5 == -1``) has no
  location gradient in the kernel and one in ``grid_sample``.
- ``mmcv.ops.focal_loss``: ``sigmoid_focal_loss_forward`` / ``_backward`` compute the kernels'
  element-wise loss and its closed-form derivative with torch operations, in float32 for
  float16 / bfloat16 tensors. mmdet's ``FocalLoss`` (DINO's classification loss) calls mmcv's
  ``sigmoid_focal_loss`` for CUDA logits with class-index targets.

Checked against mmcv 2.1.0 (the ext functions' arguments and buffers, and the kernels in
mmcv/ops/csrc). These are all the mmcv ops that the recipes in configs/ reach in training and
testing: Cascade Mask R-CNN / Mask R-CNN (RPN, RoI extractors, mask targets, NMS), Mask2Former
(deformable attention; its point sampling is ``grid_sample``), DINO (deformable attention,
focal loss); the UperNet recipes (UPerHead, FCNHead, cross-entropy, SyncBN, which is torch's)
reach none.

:func:`apply` changes nothing where mmcv was compiled with CUDA (its own kernels stay) or where
torch sees no CUDA device (no CUDA tensor can reach an op). The routed functions work on any
device, so tests call them on CPU tensors.
"""
import functools
import importlib
from typing import Callable, Dict, List, Sequence, Tuple

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


def _level_shapes(spatial_shapes, level_start_index, num_keys: int) -> List[Tuple[int, int]]:
    """The (h, w) of each level as ints, checked against ``level_start_index`` and the number
    of keys (the kernel reads each level at its start index; mmcv's PyTorch path splits the
    keys by h * w, so the two agree only where the starts are the running sums)."""
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    sizes = [h * w for h, w in shapes]
    running = [sum(sizes[:i]) for i in range(len(sizes))]
    if starts != running or sum(sizes) != num_keys:
        raise ValueError(
            f'MultiScaleDeformableAttention: spatial_shapes {shapes} (h, w per level) give '
            f'{sum(sizes)} keys starting at {running}, but value has {num_keys} keys and '
            f'level_start_index is {starts}; pass the levels\' shapes in the order value '
            'concatenates them, and level_start_index = cat([0], (h * w).cumsum(0)[:-1]).')
    return shapes


def _ms_deform_attn(value, shapes, sampling_locations, attention_weights):
    """mmcv's PyTorch multi-scale deformable attention in the compute dtype, autocast off:
    (bs, num_queries, num_heads * head_dims)."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    dtype = _compute_dtype(value)
    with torch.autocast(value.device.type, enabled=False):
        return multi_scale_deformable_attn_pytorch(
            value.to(dtype), shapes, sampling_locations.to(dtype), attention_weights.to(dtype))


def ms_deform_attn_forward(value, value_spatial_shapes, value_level_start_index,
                           sampling_locations, attention_weights, im2col_step) -> torch.Tensor:
    """``mmcv._ext.ms_deform_attn_forward`` through mmcv's PyTorch path: returns
    (bs, num_queries, num_heads * head_dims) in ``value``'s dtype. ``value`` (bs, num_keys,
    num_heads, head_dims) holds the levels' maps one after another (``value_spatial_shapes``
    (num_levels, 2) as (h, w), starting at ``value_level_start_index``); each head samples each
    level at ``sampling_locations`` (bs, num_queries, num_heads, num_levels, num_points, 2),
    (x, y) in [0, 1] of the map's width / height, bilinearly with zeros outside the map (pixel
    centres at (i + 0.5) / size, as the kernel and ``grid_sample(align_corners=False)``), and
    sums the samples weighted by ``attention_weights`` (bs, num_queries, num_heads, num_levels,
    num_points). ``im2col_step`` only splits the kernel's work over the batch: not used."""
    shapes = _level_shapes(value_spatial_shapes, value_level_start_index, value.size(1))
    return _ms_deform_attn(value, shapes, sampling_locations,
                           attention_weights).to(value.dtype)


def ms_deform_attn_backward(value, value_spatial_shapes, value_level_start_index,
                            sampling_locations, attention_weights, grad_output, grad_value,
                            grad_sampling_loc, grad_attn_weight, im2col_step) -> None:
    """``mmcv._ext.ms_deform_attn_backward``: the gradients of :func:`ms_deform_attn_forward`
    with respect to ``value``, ``sampling_locations`` and ``attention_weights`` for
    ``grad_output`` (bs, num_queries, num_heads * head_dims), by torch.autograd through the
    recomputed forward, added into ``grad_value``, ``grad_sampling_loc`` and
    ``grad_attn_weight`` (the buffers mmcv passes, zeros of the inputs' shapes and dtype; the
    kernel adds into the first and, depending on head_dims, adds into or writes the others,
    which is the same on zeros)."""
    shapes = _level_shapes(value_spatial_shapes, value_level_start_index, value.size(1))
    dtype = _compute_dtype(value)
    with torch.enable_grad():  # mmcv's backward is once_differentiable: grad mode is off
        inputs = [t.detach().to(dtype).requires_grad_()
                  for t in (value, sampling_locations, attention_weights)]
        output = _ms_deform_attn(inputs[0], shapes, *inputs[1:])
        grads = torch.autograd.grad(output, inputs, grad_output.to(dtype))
    for buffer, grad in zip((grad_value, grad_sampling_loc, grad_attn_weight), grads):
        buffer.add_(grad.to(buffer.dtype))


_FLT_MIN = torch.finfo(torch.float32).tiny  # the kernels clamp p and 1 - p to C's FLT_MIN


def _focal_parts(input, target, weight):
    """For (N, C) logits and (N,) class indices (C: background): whether each entry is its
    row's class, p = sigmoid(x), log p and log(1 - p) clamped as the kernels do, and each row's
    class weight (None without weights), in the compute dtype."""
    x = input.to(_compute_dtype(input))
    num_classes = x.size(1)
    positive = target[:, None] == torch.arange(num_classes, device=x.device)
    p = torch.sigmoid(x)
    log_p, log_q = p.clamp_min(_FLT_MIN).log(), (1 - p).clamp_min(_FLT_MIN).log()
    row_weight = None
    if weight.numel():
        if len(target) and int(target.max()) >= num_classes:
            raise ValueError(
                f'sigmoid_focal_loss: class weights ({weight.numel()}) need every target below '
                f'the {num_classes} classes, but a target is {int(target.max())} (background); '
                'weight the rows after the loss instead, as mmdet does.')
        row_weight = weight.to(x.dtype)[target][:, None]
    return positive, p, log_p, log_q, row_weight


def sigmoid_focal_loss_forward(input, target, weight, output, gamma, alpha) -> None:
    """``mmcv._ext.sigmoid_focal_loss_forward``: writes into ``output`` (N, C) the focal loss of
    each logit of ``input`` (N, C) for the class indices ``target`` (N,): -alpha (1 - p)^gamma
    log p for a row's own class, -(1 - alpha) p^gamma log(1 - p) for the others, times
    ``weight[target]`` where ``weight`` (C,) is not empty."""
    with torch.autocast(input.device.type, enabled=False):
        positive, p, log_p, log_q, row_weight = _focal_parts(input, target, weight)
        loss = torch.where(positive, -alpha * (1 - p).pow(gamma) * log_p,
                           -(1 - alpha) * p.pow(gamma) * log_q)
        if row_weight is not None:
            loss = loss * row_weight
    output.copy_(loss)


def sigmoid_focal_loss_backward(input, target, weight, grad_input, gamma, alpha) -> None:
    """``mmcv._ext.sigmoid_focal_loss_backward``: writes into ``grad_input`` (N, C) the
    derivative of each entry of :func:`sigmoid_focal_loss_forward` with respect to its logit
    (mmcv then multiplies it by the output gradient), by the kernel's closed form."""
    with torch.autocast(input.device.type, enabled=False):
        positive, p, log_p, log_q, row_weight = _focal_parts(input, target, weight)
        grad = torch.where(positive, -alpha * (1 - p).pow(gamma) * (1 - p - gamma * p * log_p),
                           -(1 - alpha) * p.pow(gamma) * (gamma * (1 - p) * log_q - p))
        if row_weight is not None:
            grad = grad * row_weight
    grad_input.copy_(grad)


# mmcv.ops module -> the ext functions it calls that we route
ROUTES: Dict[str, Dict[str, Callable]] = {
    'mmcv.ops.roi_align': dict(roi_align_forward=roi_align_forward,
                               roi_align_backward=roi_align_backward),
    'mmcv.ops.nms': dict(nms=nms),
    'mmcv.ops.multi_scale_deform_attn': dict(ms_deform_attn_forward=ms_deform_attn_forward,
                                             ms_deform_attn_backward=ms_deform_attn_backward),
    'mmcv.ops.focal_loss': dict(sigmoid_focal_loss_forward=sigmoid_focal_loss_forward,
                                sigmoid_focal_loss_backward=sigmoid_focal_loss_backward),
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
