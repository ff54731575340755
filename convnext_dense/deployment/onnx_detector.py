"""``convnext_dense.OnnxDetector``: an exported Mask R-CNN / Cascade Mask R-CNN (ONNX file,
:mod:`.detector_export`) evaluated through mmdet's own test path.

Everything around the graph is the config's own: the ``data_preprocessor`` (normalisation,
padding), the dataloader and the evaluator (CocoMetric, bbox and segm) of the Runner. The
graph's padded detections are turned into mmdet's ``pred_instances`` in the original image's
pixels by :func:`.detector_export.detections_to_sample` (undo the resize, paste the masks).
tools/test.py CONFIG FILE.onnx builds it through :func:`onnx_detector_config`.
"""
from typing import Optional

from mmdet.models.detectors.base import BaseDetector

from ..errors import ConfigError, InputError, UnsupportedError
from ..registry import MODELS
from .detector_export import (OUTPUT_NAMES, detections_to_sample, has_rpn_and_mask_head,
                              onnx_detector_outputs)
from .runtime import create_session


@MODELS.register_module()
class OnnxDetector(BaseDetector):
    """Inference-only detector running ``onnx_file`` (exported by
    tools/deployment/export_onnx.py from a Mask R-CNN / Cascade Mask R-CNN config).

    Args:
        onnx_file: the exported file.
        data_preprocessor: the PyTorch model's (``cfg.model.data_preprocessor``).
        mask_thr_binary: ``cfg.model.test_cfg.rcnn.mask_thr_binary``.
        threads: onnxruntime intra-op threads (default: $OMP_NUM_THREADS, else its choice).
    """

    def __init__(self, onnx_file: str, data_preprocessor: Optional[dict] = None,
                 mask_thr_binary: float = 0.5, threads: Optional[int] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.onnx_file = onnx_file
        self.session = create_session(onnx_file, threads)
        names = tuple(o.name for o in self.session.get_outputs())
        if names != OUTPUT_NAMES:
            raise InputError(f'{onnx_file} is not a detector export: its outputs are {names}, '
                             f'a detector export has {OUTPUT_NAMES}. Export with '
                             f'tools/deployment/export_onnx.py CONFIG CHECKPOINT --out FILE.')
        self.mask_thr_binary = mask_thr_binary

    def predict(self, batch_inputs, batch_data_samples, rescale: bool = True):
        """Detections of (N, 3, H, W) preprocessed images, in the original images' pixels
        (``rescale`` is always on: the evaluator needs them so)."""
        outputs = onnx_detector_outputs(self.session,
                                        batch_inputs.detach().float().cpu().numpy())
        for i, sample in enumerate(batch_data_samples):
            result = detections_to_sample(outputs, i, sample.metainfo, self.mask_thr_binary)
            sample.pred_instances = result.pred_instances.to(batch_inputs.device)
        return batch_data_samples

    def extract_feat(self, batch_inputs):
        raise UnsupportedError(f'{self.onnx_file}: an exported detector returns '
                               f'detections only; export the features with --part features.')

    def _forward(self, batch_inputs, batch_data_samples=None):
        return tuple(onnx_detector_outputs(self.session, batch_inputs.detach().float().cpu()
                                           .numpy()))

    def loss(self, batch_inputs, batch_data_samples):
        raise UnsupportedError(f'{self.onnx_file}: an ONNX detector cannot be trained; '
                               f'train the PyTorch config and export again.')


def onnx_detector_config(model_cfg, onnx_file: str, config_path: str = 'the config') -> dict:
    """``cfg.model`` of a Mask R-CNN / Cascade Mask R-CNN config with
    ``convnext_dense.OnnxDetector`` running ``onnx_file`` in place of the PyTorch model (same
    data_preprocessor and mask threshold)."""
    rcnn = (model_cfg.get('test_cfg') or {}).get('rcnn')
    if not has_rpn_and_mask_head(model_cfg) or rcnn is None:
        raise ConfigError(f'{config_path}: model {model_cfg.get("type")!r} is not a Mask '
                          f'R-CNN / Cascade Mask R-CNN (rpn_head, roi_head.mask_head, '
                          f'test_cfg.rcnn); tools/test.py evaluates ONNX files of those '
                          f'detectors and of segmentors only.')
    return dict(type='convnext_dense.OnnxDetector', onnx_file=onnx_file,
                data_preprocessor=model_cfg.get('data_preprocessor'),
                mask_thr_binary=rcnn.get('mask_thr_binary', 0.5))
