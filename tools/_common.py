"""What tools/train.py, test.py and convert_checkpoint.py share: imports, config loading, the
one function that builds the Runner, the checkpoint-exists check, and error reporting (a
:class:`~convnext_dense.errors.UserError` is one line on stderr and exit status 2; ``--debug``
or ``CONVNEXT_DENSE_DEBUG=1`` shows the traceback)."""
import importlib
import os
import os.path as osp
import sys

try:
    import convnext_dense  # registers our scope, applies the compat fixes
except ModuleNotFoundError as error:  # not installed: a plain checkout, the package next to us
    if error.name != 'convnext_dense':
        raise
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import convnext_dense  # noqa: F401
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from convnext_dense.errors import (ConfigError, ConfigKeyError, MissingFileError,  # noqa: E402
                                   UserError)

SCOPES = ('mmdet', 'mmseg')
DEBUG_ENV = 'CONVNEXT_DENSE_DEBUG'


def add_common_args(parser) -> None:
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='directory for logs, checkpoints and metrics '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_dataloader.batch_size=2 '
                        'data_root=/path "model.backbone.out_indices=[0,1]". A top-level '
                        'variable of the config file (max_iters=4, num_classes=3) is applied '
                        'where the file used it (the config is re-read with the new value). '
                        'A key that is not in the config but close to one that is (a typo), '
                        'or a new top-level key that nothing reads, is refused; prefix a key '
                        'with + to add it anyway (+model.backbone.new_key=1). Entries of a '
                        'list by index: model.roi_head.bbox_head.0.num_classes=3')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (none: one process)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0)
    add_debug_arg(parser)


def add_debug_arg(parser) -> None:
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error '
                        f'(also {DEBUG_ENV}=1); without it an expected error (a missing file, a '
                        'typo in --cfg-options, ...) is one line and exit status 2')


def load_config(args) -> Config:
    """Read the config, apply --cfg-options / --work-dir / --launcher, init the scope."""
    if not osp.isfile(args.config):
        raise MissingFileError(f'config file {args.config} does not exist; give the path of '
                               f'a config, e.g. configs/detection/cascade_convnext_t_coco.py')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    from _overrides import apply_variables
    cfg = Config.fromfile(args.config)
    old_root = cfg.get('data_root')
    options = check_cfg_options(cfg, args.cfg_options or {}, args.config)
    # a top-level variable (max_iters, num_classes, data_root, ...) is applied where the
    # config used it, by re-reading the config with the new value
    cfg, rest, notes = apply_variables(cfg, args.config, options)
    for note in notes:
        print(note, flush=True)
    if rest:
        cfg.merge_from_dict(rest)
    if 'data_root' in options:  # also datasets that name their own data_root
        _propagate_data_root(cfg, old_root, cfg.data_root)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0])
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ConfigError(f'{args.config}: default_scope is {scope!r}; these tools run configs '
                          f"with default_scope 'mmdet' (detection) or 'mmseg' (segmentation).")
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    return cfg


class CfgOptionError(ConfigKeyError):
    """A ``--cfg-options`` key that is refused."""


def check_cfg_options(cfg, options: dict, config_path: str = 'the config') -> dict:
    """``--cfg-options`` with likely typos refused: a key whose parent exists in the config
    but which itself does not, while a sibling key is spelled almost the same (difflib), stops
    with an error naming the closest existing key. A new key without a close sibling is
    accepted (configs are open-ended), and a leading ``+`` forces a new key (it is stripped).
    Returns the options to merge."""
    import difflib

    from _overrides import RUNNER_KEYS, same_named_keys
    checked = {}
    for key, value in options.items():
        written = [v for v in (value if isinstance(value, (list, tuple)) else [value])
                   if isinstance(v, str) and v.replace(' ', '').startswith('dict(')]
        if written:
            index = '.0' if isinstance(value, (list, tuple)) else ''
            hint = ' (TensorBoard: tools/train.py --vis tensorboard)' \
                if 'vis_backends' in key else ''
            raise CfgOptionError(
                f'--cfg-options {key}: {written[0]} stays a string on the command line; set '
                f'the keys inside it one by one, e.g. {key.lstrip("+")}{index}.type=...{hint}')
        if key.startswith('+'):
            checked[key[1:]] = value
            continue
        checked[key] = value
        node, walked = cfg._cfg_dict, []
        parts = key.split('.')
        top = parts[0]
        if top not in node and top not in RUNNER_KEYS and not difflib.get_close_matches(
                top, [str(k) for k in node], n=1, cutoff=0.8):
            same = same_named_keys(cfg, top)
            text = _option_text(value)
            instead = (f'; the keys named {top} are {" ".join(same)}: set those, e.g. '
                       + ' '.join(f'{k}={text}' for k in same[:4])) if same else ''
            raise CfgOptionError(
                f'--cfg-options {key}: {config_path} has no top-level variable {top}, so '
                f'nothing would read it{instead}; write +{key}=... to add the key anyway.')
        for i, part in enumerate(parts):
            if isinstance(node, (list, tuple)) and not part.isdigit():
                rest = '.'.join(parts[i:])
                at = '.'.join(walked)
                text = _option_text(value)
                raise CfgOptionError(
                    f'--cfg-options {key}: {at} in {config_path} is a list of {len(node)}; '
                    f'set each entry by its index: '
                    + ' '.join(f'{at}.{j}.{rest}={text}' for j in range(len(node))))
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


def _option_text(value) -> str:
    """``value`` as it is written on the command line (``3``, ``abc``, ``[1,2]``)."""
    return value if isinstance(value, str) else repr(value).replace(' ', '')


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
            # written out under the old root (a dumped config); paths the re-read config
            # built from data_root already start with the new one
            if isinstance(path, str) and path.startswith(old_root) and \
                    not path.startswith(data_root):
                evaluator['ann_file'] = osp.join(data_root, path[len(old_root):].lstrip('/'))


# ----------------------------------------------------------------------------- checkpoints
def require_checkpoint(path, what: str = 'checkpoint',
                       hint: str = 'give the path of a checkpoint file') -> None:
    """``FileNotFoundError`` naming ``what`` and ``path`` when the local file ``path`` does not
    exist (URLs are left to the loader)."""
    if path and '://' not in str(path) and not osp.isfile(path):
        raise MissingFileError(f'{what} {path} does not exist; {hint}.')


# ----------------------------------------------------------------------------- the runner
STOCK_IMAGE_LOADERS = ('LoadImageFromFile', 'mmcv.LoadImageFromFile')


def select_components(cfg: Config) -> None:
    """What the tools choose for any config they run: the checked image loader in the
    validation and test pipelines (:func:`check_test_images`) and, for a distributed run
    without GPU that names no ``model_wrapper_cfg``, the CPU-capable DDP wrapper. The config's
    checkpoint hook stays as written (:func:`use_atomic_checkpoints` is ``--atomic-checkpoints``).
    """
    from convnext_dense.engine.distributed import accelerator_available
    check_test_images(cfg)
    if cfg.get('launcher', 'none') != 'none' and cfg.get('model_wrapper_cfg') is None \
            and not accelerator_available():
        cfg.model_wrapper_cfg = dict(
            type='convnext_dense.AnyDeviceDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))


STOCK_CHECKPOINT_HOOKS = ('CheckpointHook', 'mmengine.CheckpointHook')


def use_atomic_checkpoints(cfg: Config):
    """``--atomic-checkpoints``: a stock ``CheckpointHook`` in ``cfg.default_hooks`` becomes
    ``convnext_dense.AtomicCheckpointHook`` with the same arguments (our configs name it
    already).

    Returns:
        str | None: the line to print about the change, None where nothing changed.
    """
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if hook is None or hook.get('type') not in STOCK_CHECKPOINT_HOOKS:
        return None
    hook['type'] = 'convnext_dense.AtomicCheckpointHook'
    return ('--atomic-checkpoints: default_hooks.checkpoint is convnext_dense.'
            'AtomicCheckpointHook (was CheckpointHook): a killed run leaves no partial file.')


def check_test_images(cfg: Config) -> None:
    """The stock ``LoadImageFromFile`` of the validation and test pipelines (also inside
    dataset wrappers) becomes ``convnext_dense.LoadImageFromFileChecked`` with the same
    arguments: a corrupt or missing image is named instead of failing deep in a transform.

    Our configs keep the stock name in their test pipelines because mmdet's ``DetInferencer``
    and mmseg's ``MMSegInferencer`` find the loader by that name and replace it; their training
    pipelines select the checked loader themselves.
    """
    for key in ('val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        datasets = [loader.get('dataset')] if isinstance(loader, dict) else []
        while datasets:
            dataset = datasets.pop()
            if not isinstance(dataset, dict):
                continue
            for step in dataset.get('pipeline') or []:
                if isinstance(step, dict) and step.get('type') in STOCK_IMAGE_LOADERS:
                    step['type'] = 'convnext_dense.LoadImageFromFileChecked'
            datasets.append(dataset.get('dataset'))
            datasets.extend(dataset.get('datasets') or [])


def init_distributed(cfg: Config) -> None:
    """``--launcher pytorch`` on a machine without GPU: initialise the process group (gloo)
    here, without the ``torch.cuda.set_device`` of mmengine's launcher; the Runner then uses
    it as it is. With a GPU, mmengine's own launcher does the job."""
    import torch.distributed as dist
    from convnext_dense.engine.distributed import (accelerator_available,
                                                   init_process_group_without_accelerator)
    if cfg.get('launcher') == 'pytorch' and not accelerator_available() \
            and not dist.is_initialized():
        dist_cfg = dict((cfg.get('env_cfg') or {}).get('dist_cfg') or {})
        init_process_group_without_accelerator(**dist_cfg)


def build_runner(cfg: Config, splits=('train', 'val'), **fits):
    """The Runner of ``cfg`` for tools/train.py (``splits=('train', 'val')``) and
    tools/test.py (``('test',)``), after :func:`select_components` and
    :func:`init_distributed`; with ``CheckpointFitsModelHook(**fits)`` registered and the
    datasets of ``splits`` checked (:func:`convnext_dense.datasets.check_dataset_config`)."""
    from convnext_dense.datasets import check_dataset_config
    from convnext_dense.datasets.classes import (check_classes, check_coco_categories,
                                                 check_label_values)
    from convnext_dense.checkpoint import CheckpointFitsModelHook
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    from _overrides import ConfigError, check_model_builds, explain_build_error
    select_components(cfg)
    path = getattr(cfg, 'filename', None) or 'the config'
    check_model_builds(cfg, path)  # typos and unknown archs before the config is logged
    check_classes(cfg, splits)  # the heads against the datasets' classes, before the log
    init_distributed(cfg)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    # a checkpoint of another model or shape is an error, not a warning
    runner.register_hook(CheckpointFitsModelHook(**fits))
    for split in splits:  # the model is built (config errors first), the datasets not yet
        loader = cfg.get(f'{split}_dataloader')
        if loader and isinstance(loader.get('dataset'), dict):
            try:
                datasets = check_dataset_config(loader['dataset'])
            except (KeyError, TypeError) as error:  # a typo in a dataset or pipeline
                message = explain_build_error(error, cfg, path)
                if message is None:
                    raise
                raise ConfigError(message) from error
            for dataset in datasets:
                check_coco_categories(dataset)
                check_label_values(dataset)
    return runner


# ----------------------------------------------------------------------------- errors
def _expected_types() -> tuple:
    """What a tool reports as one line: our :class:`~convnext_dense.errors.UserError` family
    (the checkpoint loader's refusals included) and a missing file (also from mmengine or
    mmcv)."""
    return (UserError, FileNotFoundError)


def expected_error(error: BaseException):
    """The exception to report as one line for ``error`` (itself, or one it was raised from or
    while handling, e.g. ours inside mmengine's registry), or None: show the traceback.

    Args:
        error (BaseException): what the tool's ``main`` raised.

    Returns:
        BaseException | None: the error to print, None where it may be a bug.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, _expected_types()):
            return error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1:  # str() would add quotes
        return str(error.args[0])
    return str(error)


def run_tool(main, argv=None) -> None:
    """Run ``main(argv)``; an expected error (:func:`expected_error`) prints ``error: ...`` on
    stderr and exits with status 2, unless ``--debug`` or ``CONVNEXT_DENSE_DEBUG=1``."""
    argv = sys.argv[1:] if argv is None else argv
    debug = '--debug' in argv or os.environ.get(DEBUG_ENV, '0').lower() not in ('', '0', 'false')
    try:
        main(argv)
    except Exception as error:
        reported = None if debug else expected_error(error)
        if reported is None:
            raise
        print(f'error: {_message(reported)}', file=sys.stderr)
        sys.exit(2)
    close_process_group()


def close_process_group() -> None:
    """End torch.distributed after a finished run. A process that exits with its gloo group
    still alive can abort in the group's destructor ('terminate called without an active
    exception', exit -6)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
