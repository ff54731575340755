"""mmcv's compiled kernels (``mmcv._ext``) written with torch and torchvision operations.

Each function takes the kernel's arguments and writes into the buffers mmcv passes, with the
kernel's numbers (tests/compat/test_mmcv_cuda_ops.py compares them with mmcv's CPU kernels).
:mod:`convnext_dense.compat.mmcv_cuda_ops` runs them for CUDA tensors where mmcv was built
without CUDA kernels; they work on any device. Checked against mmcv 2.1.0.
"""
from typing import List, Tuple

import torch

from ..errors import ConfigError, UnsupportedError
from .roi_align import compute_dtype as _compute_dtype
from .roi_align import roi_align

_FIX = ('build mmcv with its CUDA ops instead (MMCV_CUDA=1 make install, which needs an nvcc '
        'that matches torch.version.cuda)')


def _check_avg_pool(pool_mode: int, where: str) -> None:
    if pool_mode != 1:  # mmcv passes 0 for 'max', 1 for 'avg'
        raise UnsupportedError(
            f'{where}: mmcv was compiled without CUDA kernels and convnext_dense routes '
            f"RoIAlign on CUDA to torchvision, which has pool_mode='avg' only; use "
            f"pool_mode='avg' or {_FIX}.")


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width,
                      spatial_scale, sampling_ratio, pool_mode, aligned) -> None:
    """``mmcv._ext.roi_align_forward`` through torchvision: fills ``output`` (K, C, h, w) with
    the average of the bilinear samples in each bin of each RoI (batch index, x1, y1, x2, y2)."""
    _check_avg_pool(pool_mode, 'RoIAlign forward')
    output.copy_(roi_align(input, rois, (aligned_height, aligned_width), spatial_scale,
                           sampling_ratio, aligned))


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
        raise ConfigError(
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
            raise ConfigError(
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


