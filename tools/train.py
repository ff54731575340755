"""Train a detector (default_scope 'mmdet') or a segmentor (default_scope 'mmseg').

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--skip-mismatched] [--cfg-options KEY=VALUE ...]
                          [--launcher {none,pytorch,slurm}]

A checkpoint given as load_from or --resume CKPT must exist and fit the model: a tensor of
another shape or a checkpoint of another model stops the run with an error naming them.
"""
import argparse
import os.path as osp
import warnings

from _common import add_common_args, load_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a convnext_dense detection or '
                                     'segmentation config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CKPT',
                        help='resume training from CKPT; without a value, from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--skip-mismatched', action='store_true',
                        help='load_from: leave tensors whose shape differs from the model at '
                        'their initial values (fine-tuning to another number of classes) '
                        'instead of stopping with an error')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (AmpOptimWrapper, dynamic loss scale)')
    add_common_args(parser)
    return parser.parse_args(argv)


def _setup_amp(cfg, requested: bool) -> None:
    import torch
    wrapper = cfg.optim_wrapper
    if requested and wrapper.get('type', 'OptimWrapper') == 'OptimWrapper':
        wrapper.type = 'AmpOptimWrapper'
        wrapper.loss_scale = 'dynamic'
    elif requested and wrapper.get('type') != 'AmpOptimWrapper':
        raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper or AmpOptimWrapper, the '
                         f'config has {wrapper.type!r}; drop --amp or change the config.')
    if wrapper.get('type') == 'AmpOptimWrapper' and not torch.cuda.is_available():
        # mmengine's AmpOptimWrapper refuses to run without an accelerator.
        warnings.warn('AMP (fp16 with loss scaling) needs a GPU and none is available: '
                      'training in fp32 with OptimWrapper instead.')
        wrapper.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    _setup_amp(cfg, args.amp)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    path = cfg.get('load_from')
    if path and '://' not in str(path) and not osp.isfile(path):
        what = '--resume' if args.resume not in (None, 'auto') else 'load_from'
        raise FileNotFoundError(f'{what} checkpoint {path} does not exist; give the path of '
                                f'a checkpoint file (or --resume alone for the latest one in '
                                f'{cfg.work_dir}).')

    from convnext_dense.engine import CheckpointFitsModelHook
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.register_hook(CheckpointFitsModelHook(skip_mismatched=args.skip_mismatched))
    runner.train()


if __name__ == '__main__':
    main()
