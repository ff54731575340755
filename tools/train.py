"""Train a detector (default_scope 'mmdet') or a segmentor (default_scope 'mmseg').

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp [{fp16,bf16}]]
                          [--skip-mismatched] [--vis tensorboard] [--cfg-options KEY=VALUE ...]
                          [--launcher {none,pytorch,slurm}] [--debug]

A checkpoint given as load_from or --resume CKPT must exist and fit the model: a tensor of
another shape or a checkpoint of another model stops the run with an error naming them
(``--skip-mismatched``: those tensors are skipped, each one logged). An official trained
ConvNeXt COCO / ADE20K model (mmcv 1.x) is accepted as load_from as it is.
``--resume`` alone continues from the newest complete checkpoint in the work dir. An expected
error is one line on stderr and exit status 2 (``--debug`` shows the traceback).
"""
import argparse
import warnings

from _common import (add_common_args, build_runner, load_config, require_checkpoint, run_tool,
                     use_atomic_checkpoints)
from convnext_dense.errors import ConfigError, ConfigKeyError, MissingPackageError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a convnext_dense detection or '
                                     'segmentation config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CKPT',
                        help='resume training from CKPT; without a value, from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--skip-mismatched', action='store_true',
                        help='load_from: leave tensors whose shape differs from the model at '
                        'their initial values (fine-tuning to another number of classes, e.g. '
                        'from an official COCO model) instead of stopping with an error; the '
                        'log names every skipped tensor with both shapes')
    parser.add_argument('--amp', nargs='?', const='fp16', default=None,
                        choices=['fp16', 'bf16'],
                        help='automatic mixed precision (AmpOptimWrapper): fp16 (the default '
                        'without a value) with dynamic loss scaling, or bf16 without loss '
                        'scaling (a GPU with bf16: Ampere or newer)')
    parser.add_argument('--vis', choices=['tensorboard'], action='append', default=[],
                        help='also log scalars (losses, lr, metrics) for TensorBoard, under '
                        '<work dir>/<timestamp>/vis_data; needs the optional package: pip '
                        'install ".[tensorboard]"')
    parser.add_argument('--atomic-checkpoints', action='store_true',
                        help="write checkpoints atomically (temporary file, fsync, rename) "
                        "where the config names mmengine's CheckpointHook, with "
                        "convnext_dense.AtomicCheckpointHook; our configs select it already")
    add_common_args(parser)
    return parser.parse_args(argv)


TENSORBOARD_INSTALL = 'pip install ".[tensorboard]" (or pip install tensorboard)'


def _tensorboard_missing() -> bool:
    """Whether mmengine's TensorboardVisBackend would fail to import its writer."""
    import importlib.util
    return importlib.util.find_spec('tensorboard') is None and \
        importlib.util.find_spec('tensorboardX') is None


def setup_visualization(cfg, backends=()) -> None:
    """Add the ``--vis`` backends to ``cfg.visualizer.vis_backends``, and stop with one line
    naming the install command when a TensorBoard backend (from ``--vis`` or the config) has
    no package to write with."""
    visualizer = cfg.get('visualizer')
    if backends and visualizer is None:
        raise ConfigKeyError('--vis needs a visualizer in the config (e.g. '
                             "visualizer = dict(type='DetLocalVisualizer', vis_backends=[...])).")
    if visualizer is None:
        return
    current = list(visualizer.get('vis_backends') or [dict(type='LocalVisBackend')])
    for backend in backends:
        if not any(str(b.get('type', '')).endswith('TensorboardVisBackend') for b in current):
            current.append(dict(type='TensorboardVisBackend'))
    visualizer.vis_backends = current
    uses_tensorboard = any(isinstance(b, dict) and
                           str(b.get('type', '')).endswith('TensorboardVisBackend')
                           for b in current)
    if uses_tensorboard and _tensorboard_missing():
        raise MissingPackageError(f'TensorBoard logging (--vis tensorboard or a '
                                  f'TensorboardVisBackend in the config) needs the tensorboard '
                                  f'package: {TENSORBOARD_INSTALL}.')


def _setup_amp(cfg, requested=None) -> None:
    """Apply --amp to ``cfg.optim_wrapper``: ``'fp16'`` (or True) or ``'bf16'`` turns an
    OptimWrapper into mmengine's AmpOptimWrapper with that autocast dtype, fp16 with dynamic
    loss scaling, bf16 without (its range is fp32's); ``None`` / False keeps the config's
    choice, e.g. ``optim_wrapper=dict(type='AmpOptimWrapper', dtype='bfloat16')``. Without a
    GPU an AmpOptimWrapper becomes an fp32 OptimWrapper, with a warning."""
    import torch
    wrapper = cfg.optim_wrapper
    if requested:
        precision = 'fp16' if requested is True else requested
        if wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ConfigError(f'--amp needs optim_wrapper.type OptimWrapper or AmpOptimWrapper, '
                              f'the config has {wrapper.type!r}; drop --amp or change the '
                              f'config.')
        if wrapper.get('type', 'OptimWrapper') == 'OptimWrapper':
            wrapper.type = 'AmpOptimWrapper'
            wrapper.loss_scale = 'dynamic'
        if precision == 'bf16':
            wrapper.dtype = 'bfloat16'
            wrapper.loss_scale = dict(enabled=False)  # a GradScaler that does nothing
        else:
            wrapper.dtype = 'float16'
            if wrapper.get('loss_scale') == dict(enabled=False):
                wrapper.loss_scale = 'dynamic'
    if wrapper.get('type') == 'AmpOptimWrapper' and not torch.cuda.is_available():
        # mmengine's AmpOptimWrapper refuses to run without an accelerator.
        warnings.warn('AMP (fp16 with loss scaling, or bf16) needs a GPU and none is available: '
                      'training in fp32 with OptimWrapper instead.')
        wrapper.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)


def resolve_resume(cfg, resume) -> None:
    """``--resume`` (``'auto'``: the newest complete checkpoint in the work dir, found by
    :func:`convnext_dense.engine.find_latest_checkpoint`; a path: that file) into
    ``cfg.resume`` / ``cfg.load_from``."""
    if resume == 'auto':
        from convnext_dense.engine import find_latest_checkpoint
        found = find_latest_checkpoint(cfg.work_dir)
        if found is None:
            warnings.warn(f'--resume: no checkpoint in {cfg.work_dir}; training from the start.')
        cfg.resume, cfg.load_from = found is not None, found
    elif resume is not None:
        cfg.resume, cfg.load_from = True, resume


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    if args.atomic_checkpoints:
        note = use_atomic_checkpoints(cfg)
        print(note or '--atomic-checkpoints: default_hooks.checkpoint is not a stock '
              'CheckpointHook; left as the config has it.', flush=True)
    _setup_amp(cfg, args.amp)
    setup_visualization(cfg, args.vis)
    resolve_resume(cfg, args.resume)
    explicit = args.resume not in (None, 'auto')
    require_checkpoint(cfg.get('load_from'), '--resume checkpoint' if explicit else
                       'load_from checkpoint', f'give the path of a checkpoint file (or '
                       f'--resume alone for the latest one in {cfg.work_dir})')
    runner = build_runner(cfg, splits=('train', 'val'), skip_mismatched=args.skip_mismatched)
    runner.train()


if __name__ == '__main__':
    run_tool(main)
