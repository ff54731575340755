"""ONNX export of a ConvNeXt backbone or a whole UperNet segmentor, checked with onnxruntime.

What is exported (``part``), for an input of (N, 3, H, W) float32 images already normalised by
the config's ``data_preprocessor`` (mean / std, BGR->RGB, padding):

- ``'model'`` of a segmentor (mmseg ``EncoderDecoder``, e.g. UperNet): one output ``logits``
  (N, num_classes, H, W), the decode head's logits resized to the input size, exactly what
  mmseg's ``encode_decode`` returns for a whole image or one sliding-window crop;
- ``'backbone'``: the backbone's maps ``feat0..feat3`` (N, C_i, H / 2**(i+2), W / 2**(i+2)),
  for a bare-backbone config (``model = dict(type='convnext_dense.ConvNeXt', ...)``) or the
  backbone of any segmentation or detection config;
- ``'features'``: backbone + neck (e.g. FPN) of a detector, ``feat0..`` (the neck's maps).

- ``'model'`` of a Mask R-CNN / Cascade Mask R-CNN detector: the whole detector (RPN, RoI
  heads, NMS, masks) as our export-time module, outputs ``boxes``, ``scores``, ``labels``,
  ``num_valid``, ``masks`` (see :mod:`.detector_export`); always the TorchScript exporter at
  opset :data:`DETECTOR_OPSET` (the dynamo exporter stops on the data-dependent box counts).

Exporter: torch's recommended one, ``torch.onnx.export(..., dynamo=True)`` (torch.export +
onnxscript); only when it raises does :func:`export_onnx` fall back to the TorchScript exporter
(``dynamo=False``) and report why.
"""
import copy
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..errors import CheckpointMismatchError, ConfigError, UnsupportedError, UserError
from .adaptive_pool import replace_adaptive_pools
from .runtime import create_session, require, run_session

PARTS = ('model', 'backbone', 'features')
TS_OPSET = 17  # the TorchScript fallback's opset (the dynamo exporter picks its own)
EXTERNAL_DATA_BYTES = 1800 * 2**20  # weights above this are saved beside the .onnx file

DETECTOR_OPSET = 17  # whole detectors: TorchScript exporter, torchvision's RoiAlign / NMS
DETECTOR_BLOCKERS = (
    "mmdet's own predict path does not export to a working ONNX file (measured on Mask R-CNN "
    "ConvNeXt-T, mmdet 3.3 / mmcv 2.1 / torch 2.14): its box decoder takes an ONNX-only "
    'branch that imports mmdet.core.export, a module mmdet 3 no longer has; the dynamo '
    'exporter stops on the data-dependent number of boxes after NMS; the TorchScript exporter '
    "freezes the traced box counts and writes mmcv's RoIAlign with an opset-17-invalid "
    'Squeeze. So whole Mask R-CNN / Cascade Mask R-CNN detectors are exported through our '
    'export-time module (convnext_dense.deployment.detector_export); other detectors (DINO, '
    'Mask2Former) export their backbone (--part backbone) or backbone + neck (--part '
    'features) only.')


class OnnxCheckError(UserError, RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


# ----------------------------------------------------------------------------- what to export
class SegmentorLogits(nn.Module):
    """(N, 3, H, W) normalised images -> (N, num_classes, H, W) logits of an mmseg
    ``EncoderDecoder`` (decode head only; the auxiliary head is a training aid)."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mmseg.models.utils import resize
        logits = self.segmentor.decode_head.forward(self.segmentor.extract_feat(x))
        return resize(logits, size=x.shape[2:], mode='bilinear',
                      align_corners=self.segmentor.align_corners)


class FeatureMaps(nn.Module):
    """(N, 3, H, W) -> the tuple of maps that ``module`` returns (a backbone), or that its
    method ``method`` returns (a detector's ``extract_feat``: backbone + neck)."""

    def __init__(self, module: nn.Module, method: Optional[str] = None):
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = getattr(self.module, self.method)(x) if self.method else self.module(x)
        return tuple(outs)


def _is_bare_backbone(model_cfg) -> bool:
    return 'backbone' not in model_cfg


def build_pytorch_model(cfg, checkpoint: Optional[str]) -> nn.Module:
    """The config's model (a segmentor, detector or bare backbone) in eval mode on the CPU,
    SyncBN turned into BatchNorm, with every weight loaded from ``checkpoint`` (``None``: keep
    the initialisation; for tests and measurements only). The scope of ``cfg`` must be set
    (``init_default_scope``)."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS
    from ..checkpoint.fit import check_checkpoint_fits, checkpoint_tensors, fit_report
    from ..checkpoint.io import load_checkpoint
    from ..checkpoint.layouts import convert_checkpoint
    model_cfg = copy.deepcopy(cfg.model)
    bare = _is_bare_backbone(model_cfg)
    if checkpoint is not None:  # the weights come from the checkpoint, not from init_cfg
        (model_cfg if bare else model_cfg.get('backbone', {})).pop('init_cfg', None)
    model = revert_sync_batchnorm(MODELS.build(model_cfg))
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint, map_location='cpu')
        if bare:  # official / timm / mmpretrain / own layouts, as the backbone's init_cfg
            state_dict = convert_checkpoint(loaded)
            report = fit_report(model, state_dict)
            if report.missing:
                raise CheckpointMismatchError(
                    f'Checkpoint {checkpoint} lacks {len(report.missing)} of the '
                    f'{len(report.model_keys)} tensors of the model of this config (first: '
                    f'{report.missing[0]}); give the checkpoint of this config.')
        else:  # raises for a missing tensor too
            check_checkpoint_fits(model, loaded, checkpoint, require_all=True)
            state_dict = checkpoint_tensors(loaded)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return model.eval()


def _check_logits_head(segmentor: nn.Module) -> None:
    """Only decode heads that predict like mmseg's BaseDecodeHead (forward -> logits, then a
    resize: UPerHead, FCNHead, ...) export as ``logits``; Mask2Former's query head does not."""
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead
    head = getattr(segmentor, 'decode_head', None)
    if not isinstance(head, BaseDecodeHead) or type(head).predict is not BaseDecodeHead.predict \
            or type(head).predict_by_feat is not BaseDecodeHead.predict_by_feat:
        raise UnsupportedError(
            f'{type(segmentor).__name__} with decode head {type(head).__name__}: only heads '
            f'whose forward gives the logits (UPerHead, FCNHead, ...) export with --part '
            f'model; export the backbone with --part backbone instead.')


def is_whole_detector(cfg, part: str) -> bool:
    """Whether ``part`` of ``cfg`` is a whole (Mask R-CNN / Cascade Mask R-CNN) detector."""
    return part == 'model' and not _is_bare_backbone(cfg.model) \
        and cfg.get('default_scope') == 'mmdet'


def check_part(cfg, part: str) -> None:
    """Raise when ``part`` of ``cfg``'s model cannot be exported (before anything is built):
    an unknown part, or the whole model of a detector that is not a Mask R-CNN / Cascade Mask
    R-CNN (:data:`DETECTOR_BLOCKERS`)."""
    from .detector_export import SUPPORTED, is_two_stage_mask_config
    if part not in PARTS:
        raise ConfigError(f'part must be one of {PARTS}, got {part!r}.')
    if is_whole_detector(cfg, part) and not is_two_stage_mask_config(cfg):
        raise UnsupportedError(
            f'{cfg.model.type}: the whole-detector export supports {SUPPORTED} (model.rpn_head '
            f'and model.roi_head.mask_head); ' + DETECTOR_BLOCKERS)


def export_module(cfg, model: nn.Module, part: str = 'model') -> Tuple[nn.Module, List[str]]:
    """The module to export for ``part`` (see the module docstring) and its output names.
    The model is deep-copied first: UperNet's pyramid pools are then replaced by
    shape-agnostic ones (:mod:`.adaptive_pool`) without touching ``model``."""
    check_part(cfg, part)
    if is_whole_detector(cfg, part):
        from .detector_export import build_export_detector
        return build_export_detector(cfg, model)
    model = copy.deepcopy(model).eval()
    bare = _is_bare_backbone(cfg.model)
    if part == 'model' and not bare:
        _check_logits_head(model)
        module = SegmentorLogits(model)
        replace_adaptive_pools(module)
        return module.eval(), ['logits']
    if part == 'features' and not bare:
        module = FeatureMaps(model, 'extract_feat')
    else:  # 'backbone', or any part of a bare-backbone config
        module = FeatureMaps(model if bare else model.backbone)
    replace_adaptive_pools(module)
    with torch.no_grad():
        count = len(module(torch.zeros(1, 3, 64, 64)))
    return module.eval(), [f'feat{i}' for i in range(count)]


# ----------------------------------------------------------------------------- export
def _dynamic_axes(output_names: Sequence[str]) -> Dict[str, Dict[int, str]]:
    axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    for name in output_names:
        axes[name] = ({0: 'batch', 2: 'height', 3: 'width'} if name == 'logits' else
                      {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'})
    return axes


def _first_line(error: BaseException) -> str:
    """One line saying why an export failed: torch.export's 'Exception summary' line when the
    message has one (the first lines are generic advice), else the first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    marks = [i for i, line in enumerate(lines) if 'Exception summary' in line]
    summary = lines[marks[0] + 1] if marks and marks[0] + 1 < len(lines) else \
        (lines[0] if lines else '')
    return f'{type(error).__name__}: {summary}'[:400]


def export_onnx(module: nn.Module, example: torch.Tensor, out: str,
                output_names: Sequence[str], dynamic: bool = False,
                fallback: bool = True) -> dict:
    """Write ``module`` traced at ``example`` (N, 3, H, W) to the ONNX file ``out``; with
    ``dynamic``, batch, height and width are symbolic. Weights over 1.8 GiB (ConvNeXt V2-H
    UperNet) are written to ``out + '.data'`` beside it (ONNX external data). Returns
    dict(exporter='dynamo' or 'torchscript', fallback_reason=None or why the dynamo exporter
    failed, external_data=bool, seconds=...)."""
    require('onnx', 'ONNX export')
    require('onnxscript', "torch's dynamo ONNX exporter")
    module = module.eval()
    axes = _dynamic_axes(output_names) if dynamic else None
    # a protobuf file holds at most 2 GiB: larger weights go to FILE.data next to FILE
    weight_bytes = sum(t.numel() * t.element_size()
                       for t in list(module.parameters()) + list(module.buffers()))
    external = weight_bytes > EXTERNAL_DATA_BYTES
    start = time.perf_counter()
    reason = None
    try:
        with torch.no_grad():
            # named dims: the ONNX axes read batch / height / width, outputs (height//4) etc.
            shapes = ({0: 'batch', 2: 'height', 3: 'width'},) if dynamic else None
            torch.onnx.export(module, (example,), out, dynamo=True, input_names=['input'],
                              output_names=list(output_names), dynamic_shapes=shapes,
                              external_data=external, verbose=False)
        exporter = 'dynamo'
    except Exception as error:  # noqa: BLE001 - any failure of the dynamo path falls back
        if not fallback:
            raise
        reason = _first_line(error)
        with torch.no_grad():
            torch.onnx.export(module, (example,), out, dynamo=False, input_names=['input'],
                              output_names=list(output_names), dynamic_axes=axes,
                              opset_version=TS_OPSET, do_constant_folding=True)
        exporter = 'torchscript'
    return dict(exporter=exporter, fallback_reason=reason, external_data=external,
                seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------- checks
def check_inputs(shape: Sequence[int], dynamic: bool, seed: int = 0) -> List[torch.Tensor]:
    """The inputs the check runs: one image at the export size ``shape`` (H, W); with
    ``dynamic`` also 2 images at (H + 40, W + 72), a size not divisible by 32 whose stride-32
    map is smaller than UperNet's 6x6 pyramid bins at the toy size."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shape
    sizes = [(1, height, width)] + ([(2, height + 40, width + 72)] if dynamic else [])
    return [torch.randn(n, 3, h, w, generator=generator) for n, h, w in sizes]


def compare(module: nn.Module, onnx_file: str, inputs: Sequence[torch.Tensor],
            atol: float = 1e-4, rtol: float = 1e-4) -> List[dict]:
    """Run ``module`` (PyTorch eager, no grad) and the ONNX file (onnxruntime, CPU) on each
    input; return one dict per input and output: shape, max_abs_diff, max_abs (of PyTorch's
    output) and tolerance = atol + rtol * max_abs. Raises :class:`OnnxCheckError` naming the
    worst output when any difference is above its tolerance."""
    session = create_session(onnx_file)
    rows = []
    for x in inputs:
        with torch.no_grad():
            expected = module(x)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        got = run_session(session, x.numpy())
        if len(got) != len(expected):
            raise OnnxCheckError(f'{onnx_file} has {len(got)} outputs, PyTorch gives '
                                 f'{len(expected)}.')
        for name, want, have in zip([o.name for o in session.get_outputs()], expected, got):
            want = want.numpy()
            if want.shape != have.shape:
                raise OnnxCheckError(f'{onnx_file}: output {name} has shape {have.shape} for '
                                     f'input {tuple(x.shape)}; PyTorch gives {want.shape}.')
            scale = float(np.abs(want).max())
            rows.append(dict(input=tuple(x.shape), output=name, shape=tuple(want.shape),
                             max_abs_diff=float(np.abs(want - have).max()), max_abs=scale,
                             tolerance=atol + rtol * scale))
    bad = [row for row in rows if not row['max_abs_diff'] <= row['tolerance']]  # NaN is bad
    if bad:
        worst = max(bad, key=lambda row: row['max_abs_diff'] / row['tolerance'])
        raise OnnxCheckError(
            f'{onnx_file} does not reproduce PyTorch: output {worst["output"]} for input '
            f'{worst["input"]} differs by up to {worst["max_abs_diff"]:.3g} (tolerance '
            f'{worst["tolerance"]:.3g} = {atol:g} + {rtol:g} x max |output| '
            f'{worst["max_abs"]:.3g}); {len(bad)} of {len(rows)} outputs fail. Do not deploy '
            f'this file; re-export with --debug and report the case.')
    return rows


def median_call_seconds(run, iters: int = 10, warmup: int = 2) -> float:
    """Median wall seconds of ``iters`` calls of ``run()`` after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def benchmark(module: nn.Module, onnx_file: str, example: torch.Tensor, iters: int = 10,
              warmup: int = 2) -> dict:
    """Median seconds per call of PyTorch eager (no grad) and onnxruntime (CPU) on
    ``example``, in one process with the same thread count (torch's and $OMP_NUM_THREADS)."""
    session = create_session(onnx_file, threads=torch.get_num_threads())
    array = example.numpy()
    with torch.no_grad():
        eager = median_call_seconds(lambda: module(example), iters, warmup)
    onnx = median_call_seconds(lambda: run_session(session, array), iters, warmup)
    return dict(pytorch_s=eager, onnxruntime_s=onnx, speedup=eager / onnx,
                threads=torch.get_num_threads())
