"""``convnext_dense.OnnxSegmentor``: an exported segmentor (ONNX file) evaluated through
mmseg's own test path.

It is an mmseg ``EncoderDecoder`` whose ``encode_decode`` (image batch -> logits at the input
size) runs the ONNX file with onnxruntime, so that everything around it is the config's own:
``data_preprocessor`` (normalisation, padding), ``test_cfg`` (whole-image or sliding-window
inference), the removal of padding, the resize to the original image size, the argmax, and
the dataloader and evaluator of the Runner. tools/test.py CONFIG FILE.onnx builds it through
:func:`onnx_model_config`.
"""
import types
from typing import List, Optional

import torch
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.models.utils import resize

from ..errors import ConfigError, InputError, UnsupportedError
from ..registry import MODELS
from .runtime import create_session, run_session


@MODELS.register_module()
class OnnxSegmentor(EncoderDecoder):
    """Inference-only segmentor running ``onnx_file`` (exported by
    tools/deployment/export_onnx.py with ``--part model``: input (N, 3, H, W) normalised
    images, output (N, num_classes, H, W) logits).

    Args:
        onnx_file: the exported file.
        data_preprocessor / test_cfg: the PyTorch model's (``cfg.model``).
        align_corners: the decode head's (for the resize to the original image size).
        threshold: the decode head's threshold for a one-channel (binary) output.
        threads: onnxruntime intra-op threads (default: $OMP_NUM_THREADS, else its choice).
    """

    def __init__(self, onnx_file: str, data_preprocessor: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, align_corners: bool = False,
                 threshold: Optional[float] = None, threads: Optional[int] = None,
                 init_cfg: Optional[dict] = None):
        # EncoderDecoder.__init__ builds a backbone and heads; only its inference code is used
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        from mmengine.config import ConfigDict
        self.onnx_file = onnx_file
        self.session = create_session(onnx_file, threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(outputs[0].shape) != 4 \
                or not isinstance(outputs[0].shape[1], int):
            raise InputError(
                f'{onnx_file} is not a segmentor export: it has {len(inputs)} input(s) and '
                f'outputs {[(o.name, o.shape) for o in outputs]}; a segmentor export has one '
                f'(N, num_classes, H, W) output. Export with tools/deployment/export_onnx.py '
                f'CONFIG CHECKPOINT --out FILE (--part model).')
        self.input_shape = inputs[0].shape  # ints where static, names where dynamic
        self.out_channels = outputs[0].shape[1]
        self.num_classes = max(self.out_channels, 2)
        self.align_corners = align_corners
        self.test_cfg = ConfigDict(test_cfg or dict(mode='whole'))
        self.train_cfg = None
        # postprocess_result reads decode_head.threshold for a one-channel output
        self.decode_head = types.SimpleNamespace(threshold=threshold)

    def _check_shape(self, inputs: torch.Tensor) -> None:
        for axis, (want, have) in enumerate(zip(self.input_shape, inputs.shape)):
            if isinstance(want, int) and want != have:
                raise InputError(
                    f'{self.onnx_file} was exported for inputs of shape {self.input_shape}; '
                    f'this batch is {tuple(inputs.shape)} (axis {axis}). Export with '
                    f'--dynamic, or with --shape matching the test pipeline (sliding-window '
                    f"inference feeds test_cfg.crop_size crops), or set the dataloader's "
                    f'batch_size to the exported one.')

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas: List[dict]) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes, h, w) logits, through onnxruntime; (h, w) as mmseg's
        decode heads choose it (the padded input size, or the crop size when sliding)."""
        self._check_shape(inputs)
        logits = torch.from_numpy(run_session(self.session, inputs.detach().float().cpu()
                                              .numpy())[0]).to(inputs.device)
        meta = batch_img_metas[0]
        if isinstance(meta['img_shape'], torch.Size):  # sliding window: the crop's size
            size = tuple(meta['img_shape'])
        else:
            size = tuple(meta.get('pad_shape', meta['img_shape'])[:2])
        if tuple(logits.shape[2:]) != size:
            logits = resize(logits, size=size, mode='bilinear', align_corners=self.align_corners)
        return logits

    def extract_feat(self, inputs):
        raise UnsupportedError(f'{self.onnx_file}: an exported segmentor returns logits '
                               f'only; export the features with --part backbone.')

    def loss(self, inputs, data_samples):
        raise UnsupportedError(f'{self.onnx_file}: an ONNX segmentor cannot be trained; '
                               f'train the PyTorch config and export again.')

    def _forward(self, inputs, data_samples=None):
        return self.encode_decode(inputs, [dict(img_shape=tuple(inputs.shape[2:]))])


def onnx_model_config(model_cfg, onnx_file: str, config_path: str = 'the config') -> dict:
    """``cfg.model`` of a segmentation config with ``convnext_dense.OnnxSegmentor`` running
    ``onnx_file`` in place of the PyTorch model (same data_preprocessor and test_cfg)."""
    decode_head = model_cfg.get('decode_head')
    if 'backbone' not in model_cfg or decode_head is None:
        raise ConfigError(f'{config_path}: model {model_cfg.get("type")!r} is not a segmentor '
                          f'with a decode_head; tools/test.py evaluates ONNX files of '
                          f'segmentation configs only.')
    if isinstance(decode_head, list):  # cascade decoders: the last head gives the logits
        decode_head = decode_head[-1]
    return dict(type='convnext_dense.OnnxSegmentor', onnx_file=onnx_file,
                data_preprocessor=model_cfg.get('data_preprocessor'),
                test_cfg=model_cfg.get('test_cfg') or dict(mode='whole'),
                align_corners=decode_head.get('align_corners', False),
                threshold=decode_head.get('threshold'))
