"""Deployment: ONNX export of backbones, UperNet segmentors and Mask R-CNN / Cascade Mask
R-CNN detectors, checked with onnxruntime (:mod:`.onnx_export`, :mod:`.detector_export`), and
``convnext_dense.OnnxSegmentor`` / ``convnext_dense.OnnxDetector`` to evaluate an exported file
with mmseg's / mmdet's dataloader and metrics (:mod:`.onnx_segmentor`, :mod:`.onnx_detector`).
onnx, onnxscript and onnxruntime are imported only when used. Importing this package registers
both (a config that names them adds ``'convnext_dense.deployment'`` to ``custom_imports``)."""
from .adaptive_pool import ShapeAgnosticAdaptiveAvgPool2d, replace_adaptive_pools
from .onnx_export import (DETECTOR_BLOCKERS, PARTS, OnnxCheckError, benchmark,
                          build_pytorch_model, check_inputs, compare, export_module, export_onnx)
from .onnx_segmentor import OnnxSegmentor, onnx_model_config
from .detector_export import (DETECTOR_TOLERANCES, ExportableTwoStageDetector, compare_detector,
                              detections_to_sample, export_detector, paste_masks)
from .onnx_detector import OnnxDetector, onnx_detector_config

__all__ = ['DETECTOR_BLOCKERS', 'DETECTOR_TOLERANCES', 'ExportableTwoStageDetector', 'PARTS',
           'OnnxCheckError', 'OnnxDetector', 'OnnxSegmentor', 'compare_detector',
           'detections_to_sample', 'export_detector', 'onnx_detector_config', 'paste_masks',
           'ShapeAgnosticAdaptiveAvgPool2d', 'benchmark', 'build_pytorch_model', 'check_inputs',
           'compare', 'export_module', 'export_onnx', 'onnx_model_config',
           'replace_adaptive_pools']
