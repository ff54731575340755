"""Torch / torchvision implementations of the mmcv ops we need outside mmcv's own kernels.

- :mod:`.roi_align`: one RoIAlign (torchvision's kernel) for the fast inference path and for
  CUDA tensors when mmcv has no CUDA kernels.
- :mod:`.mmcv_kernels`: drop-in functions with the signatures of ``mmcv._ext``'s kernels
  (RoIAlign, NMS, multi-scale deformable attention, sigmoid focal loss).
"""
from .roi_align import roi_align  # noqa: F401
