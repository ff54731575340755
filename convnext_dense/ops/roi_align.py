"""RoIAlign through torchvision's kernel, with mmcv's semantics (``pool_mode='avg'``)."""
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Tuple

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for float16 / bfloat16 tensors (torchvision's kernels do not all take bf16),
    the tensor's own dtype otherwise."""
    return torch.float32 if tensor.dtype in LOW_PRECISION else tensor.dtype


@functools.lru_cache(maxsize=None)
def _thread_pool(size: int) -> ThreadPoolExecutor:
    """One pool per thread count (``torch.get_num_threads()`` rarely changes)."""
    return ThreadPoolExecutor(max_workers=size, thread_name_prefix='roi_align')


def roi_align(input: torch.Tensor, rois: torch.Tensor, output_size: Tuple[int, int],
              spatial_scale: float, sampling_ratio: int, aligned: bool,
              threads: int = 1) -> torch.Tensor:
    """Average of the bilinear samples in each bin of each RoI, as mmcv's ``roi_align``.

    Args:
        input (Tensor): feature map (N, C, H, W), read as NCHW.
        rois (Tensor): (K, 5) rows of (batch index, x1, y1, x2, y2) in input-image pixels.
        output_size (tuple[int, int]): (h, w) of each RoI's output.
        spatial_scale (float): feature-map pixels per input-image pixel.
        sampling_ratio (int): samples per bin side; 0 adapts it to the RoI's size.
        aligned (bool): shift the boxes by half a pixel (pixel centres at +0.5).
        threads (int): on the CPU, split the RoIs over this many Python threads (torchvision's
            kernel releases the GIL; mmcv's and torchvision's run on one core each).

    Returns:
        Tensor: (K, C, h, w) in the compute dtype (float32 for half-precision inputs).
    """
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    dtype = compute_dtype(input)
    input, rois = input.to(dtype), rois.to(dtype)

    def align(chunk):
        return torch.ops.torchvision.roi_align(
            input, chunk, float(spatial_scale), int(output_size[0]), int(output_size[1]),
            int(sampling_ratio), bool(aligned))

    with torch.autocast(input.device.type, enabled=False):
        chunks = min(threads, len(rois) // 64) if input.device.type == 'cpu' else 1
        if chunks < 2:  # a few RoIs: one call
            return align(rois)
        parts = _thread_pool(threads).map(align, rois.tensor_split(chunks))
        return torch.cat(list(parts))
