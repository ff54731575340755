"""Deployment: ONNX export of backbones and UperNet segmentors, checked with onnxruntime
(:mod:`.onnx_export`), and ``convnext_dense.OnnxSegmentor`` to evaluate an exported segmentor
with mmseg's dataloader and metrics (:mod:`.onnx_segmentor`). onnx, onnxscript and onnxruntime
are imported only when used. Importing this package registers ``convnext_dense.OnnxSegmentor``
(a config that names it adds ``'convnext_dense.deployment'`` to ``custom_imports``)."""
from .adaptive_pool import ShapeAgnosticAdaptiveAvgPool2d, replace_adaptive_pools
from .onnx_export import (DETECTOR_BLOCKERS, PARTS, OnnxCheckError, benchmark,
                          build_pytorch_model, check_inputs, compare, export_module, export_onnx)
from .onnx_segmentor import OnnxSegmentor, onnx_model_config

__all__ = ['DETECTOR_BLOCKERS', 'PARTS', 'OnnxCheckError', 'OnnxSegmentor',
           'ShapeAgnosticAdaptiveAvgPool2d', 'benchmark', 'build_pytorch_model', 'check_inputs',
           'compare', 'export_module', 'export_onnx', 'onnx_model_config',
           'replace_adaptive_pools']
