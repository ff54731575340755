"""Shared set-up for tools/train.py and tools/test.py (detection and segmentation configs)."""
import importlib
import os
import os.path as osp
import sys

# Make `import convnext_dense` work from a plain checkout too (tools/ sits next to the package).
_REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import convnext_dense  # noqa: E402,F401  (applies compat patches, registers our scope)
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

SCOPES = ('mmdet', 'mmseg')


def add_common_args(parser) -> None:
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='directory for logs, checkpoints and metrics '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_dataloader.batch_size=2 '
                        'data_root=/path "model.backbone.out_indices=[0,1]"')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (none: one process)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0)


def load_config(args) -> Config:
    """Read the config, apply --cfg-options / --work-dir / --launcher, init the scope."""
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config file {args.config} does not exist')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    old_root = cfg.get('data_root')
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if 'data_root' in (args.cfg_options or {}):
        _propagate_data_root(cfg, old_root, args.cfg_options['data_root'])
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0])
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'{args.config}: default_scope is {scope!r}; these tools run configs '
                         f"with default_scope 'mmdet' (detection) or 'mmseg' (segmentation).")
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    return cfg


def _propagate_data_root(cfg: Config, old_root, data_root: str) -> None:
    """``--cfg-options data_root=X`` also reaches every dataset and evaluator.

    A top-level ``data_root`` in a config file is only read while the file is parsed, so
    overriding it afterwards would not reach the datasets without this step. Evaluator paths
    built as ``data_root + '...'`` (COCO ``ann_file``) are re-rooted too.
    """
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        dataset = loader.get('dataset') if loader else None
        while dataset is not None:
            if 'data_root' in dataset:
                dataset['data_root'] = data_root
            dataset = dataset.get('dataset')
    if not old_root:
        return
    for key in ('val_evaluator', 'test_evaluator'):
        evaluators = cfg.get(key)
        for evaluator in evaluators if isinstance(evaluators, list) else [evaluators]:
            path = evaluator.get('ann_file') if evaluator else None
            if isinstance(path, str) and path.startswith(old_root):
                evaluator['ann_file'] = osp.join(data_root, path[len(old_root):].lstrip('/'))
