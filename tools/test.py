"""Evaluate a checkpoint of a detection ('mmdet') or segmentation ('mmseg') config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out PATH] [--show-dir DIR]
                         [--tta] [--fast [--fast-dtype DTYPE]] [--cfg-options KEY=VALUE ...]
                         [--launcher {none,pytorch,slurm}] [--debug]

Segmentation prints mIoU / mAcc / aAcc overall and IoU / Acc per class; detection prints the
COCO metrics of the config's evaluator.

CHECKPOINT may be an ONNX file (tools/deployment/export_onnx.py) of a segmentor or of a Mask
R-CNN / Cascade Mask R-CNN detector: it is then run with onnxruntime (convnext_dense.
OnnxSegmentor / OnnxDetector) in place of the config's PyTorch model, with the config's
data_preprocessor, test_cfg, dataloader and evaluator (COCO bbox and segm mAP for detectors);
no checkpoint is loaded.
"""
import argparse
import os.path as osp

from _common import add_common_args, build_runner, load_config, require_checkpoint, run_tool
from convnext_dense.errors import ConfigError, ConfigKeyError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a convnext_dense '
                                     'detection or segmentation checkpoint')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file, or an exported segmentor or '
                        'Mask R-CNN / Cascade Mask R-CNN detector (.onnx) to evaluate with '
                        'onnxruntime')
    parser.add_argument('--out', help='detection: a .pkl file for the raw predictions; '
                        'segmentation: a directory for the predicted label maps (PNG)')
    parser.add_argument('--show-dir', help='write images with the predictions drawn here')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation with the '
                        "config's tta_model and tta_pipeline (multi-scale + flip)")
    parser.add_argument('--fast', action='store_true', help='fast inference: channels-last, '
                        'malloc tuning; bf16/fp16 autocast and torch.compile of backbone and '
                        'neck where the hardware runs low precision natively '
                        '(convnext_dense.fast)')
    parser.add_argument('--fast-dtype', choices=['auto', 'float32', 'bfloat16', 'float16'],
                        default='auto', help="with --fast: the autocast dtype; 'auto' picks "
                        'what the hardware runs natively. Forcing bfloat16 on a CPU without '
                        'native bf16 is slow, but shows its accuracy cost')
    add_common_args(parser)
    return parser.parse_args(argv)


def _enable_show_dir(cfg, show_dir: str) -> None:
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ConfigKeyError('--show-dir needs default_hooks.visualization (DetVisualizationHook '
                             'or SegVisualizationHook) in the config; add it or drop --show-dir.')
    hook.draw = True
    show_dir = osp.abspath(show_dir)
    if cfg.default_scope == 'mmdet':
        hook.test_out_dir = show_dir  # an absolute path is used as it is
    else:
        hook.interval = 1  # every test image, not every 50th
        backends = cfg.visualizer.setdefault('vis_backends', [dict(type='LocalVisBackend')])
        local = [b for b in backends if b.get('type') == 'LocalVisBackend']
        if not local:
            backends.append(dict(type='LocalVisBackend'))
            local = backends[-1:]
        for backend in local:
            backend.img_save_dir = show_dir  # joined to save_dir; absolute wins


def _enable_tta(cfg, config_path: str) -> None:
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise ConfigKeyError(f'--tta: {config_path} defines no {" / ".join(missing)}; add them to '
                             f'the config (see configs/segmentation/_base_/datasets/ade20k.py).')
    module = cfg.model
    if 'tta_test_cfg' in cfg:  # e.g. the official multi-scale test runs on whole images
        module.test_cfg = cfg.tta_test_cfg
    cfg.model = dict(**cfg.tta_model, module=module)
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # wrappers such as ConcatDataset / RepeatDataset
        dataset = dataset.dataset
    dataset.pipeline = cfg.tta_pipeline


def _use_onnx_model(cfg, args) -> None:
    """The config's model becomes convnext_dense.OnnxSegmentor (segmentation) or
    convnext_dense.OnnxDetector (Mask R-CNN / Cascade Mask R-CNN) running args.checkpoint."""
    if args.fast:
        raise ConfigError(f'--fast applies to PyTorch models; {args.checkpoint} is an ONNX '
                          f'file (run with onnxruntime). Drop --fast.')
    if args.tta and cfg.default_scope == 'mmdet':
        raise ConfigError(f'--tta: {args.checkpoint} is an ONNX detector, which returns merged '
                          f'detections only; evaluate it without --tta.')
    if cfg.default_scope not in ('mmseg', 'mmdet'):
        raise ConfigError(f'{args.checkpoint}: tools/test.py evaluates ONNX files of '
                          f'segmentation and Mask R-CNN / Cascade Mask R-CNN configs only.')
    # importing convnext_dense.deployment registers OnnxSegmentor and OnnxDetector
    from convnext_dense.deployment import onnx_detector_config, onnx_model_config
    require_checkpoint(args.checkpoint, 'ONNX file',
                       'export one with tools/deployment/export_onnx.py CONFIG CHECKPOINT '
                       '--out FILE.onnx')
    build = onnx_model_config if cfg.default_scope == 'mmseg' else onnx_detector_config
    cfg.model = build(cfg.model, osp.abspath(args.checkpoint), args.config)
    cfg.load_from = None


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    if args.checkpoint.lower().endswith('.onnx'):
        _use_onnx_model(cfg, args)
    else:
        require_checkpoint(args.checkpoint, 'checkpoint',
                           'give the path of a checkpoint file written by training this config')
        cfg.load_from = args.checkpoint
    if args.show_dir:
        _enable_show_dir(cfg, args.show_dir)
    if args.tta:
        _enable_tta(cfg, args.config)
    if args.out and cfg.default_scope == 'mmseg':
        cfg.test_evaluator.output_dir = args.out
        cfg.test_evaluator.keep_results = True
    if args.out and cfg.default_scope == 'mmdet' and not args.out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f'--out {args.out}: detection predictions are written as a pickle; '
                          f'give a file name ending in .pkl.')

    runner = build_runner(cfg, splits=('test',), require_all=True)
    if args.out and cfg.default_scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    if args.fast:
        from convnext_dense.checkpoint.fit import unwrap_model
        from convnext_dense.inference.fast import enable_fast_inference
        model = unwrap_model(runner.model)  # DDP and TTA wrappers: speed up the inner model
        import torch
        low_precision = dict(auto=True, float32=False, bfloat16=torch.bfloat16,
                             float16=torch.float16)[args.fast_dtype]
        enable_fast_inference(model, low_precision=low_precision)
        runner.logger.info(f'fast inference: {model.fast_inference}')
    runner.test()


if __name__ == '__main__':
    run_tool(main)
