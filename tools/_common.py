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
                        'data_root=/path "model.backbone.out_indices=[0,1]". A key that is '
                        'not in the config but close to one that is (a typo) is refused; '
                        'prefix a key with + to add it anyway (+model.backbone.new_key=1)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (none: one process)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0)


def load_config(args) -> Config:
    """Read the config, apply --cfg-options / --work-dir / --launcher, init the scope."""
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config file {args.config} does not exist; give the path of '
                                f'a config, e.g. configs/detection/cascade_convnext_t_coco.py')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    old_root = cfg.get('data_root')
    options = check_cfg_options(cfg, args.cfg_options or {}, args.config)
    if options:
        cfg.merge_from_dict(options)
    if 'data_root' in options:
        _propagate_data_root(cfg, old_root, options['data_root'])
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


class CfgOptionError(KeyError):
    """A ``--cfg-options`` key that is refused (printed without KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


def check_cfg_options(cfg, options: dict, config_path: str = 'the config') -> dict:
    """``--cfg-options`` with likely typos refused: a key whose parent exists in the config
    but which itself does not, while a sibling key is spelled almost the same (difflib), stops
    with an error naming the closest existing key. A new key without a close sibling is
    accepted (configs are open-ended), and a leading ``+`` forces a new key (it is stripped).
    Returns the options to merge."""
    import difflib
    checked = {}
    for key, value in options.items():
        if key.startswith('+'):
            checked[key[1:]] = value
            continue
        checked[key] = value
        node, walked = cfg._cfg_dict, []
        for part in key.split('.'):
            if isinstance(node, (list, tuple)) and part.isdigit():
                if int(part) >= len(node):
                    raise CfgOptionError(
                        f'--cfg-options {key}: {".".join(walked)} in {config_path} has '
                        f'{len(node)} entries; index {part} is out of range.')
                node = node[int(part)]
            elif isinstance(node, dict):
                if part not in node:
                    close = difflib.get_close_matches(part, [str(k) for k in node], n=1,
                                                      cutoff=0.8)
                    if close:
                        where = '.'.join(walked) or 'the top level'
                        raise CfgOptionError(
                            f'--cfg-options {key}: {config_path} has no key {part!r} in '
                            f'{where}; did you mean {".".join(walked + close)}? To add the '
                            f'new key on purpose, write it as +{key}=...')
                    break  # a new key: fine
                node = node[part]
            else:
                break
            walked.append(part)
    return checked


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
