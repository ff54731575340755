"""Does a state dict fit a model: one report of missing, unexpected and mismatched tensors.

:func:`fit_report` compares a model (DDP / TTA wrappers unwrapped) with a checkpoint or state
dict (a leading DDP ``module.`` ignored, as mmengine's loader does; BatchNorm
``num_batches_tracked`` never counts as missing). Backbone loading, the official-model
adaptation, ONNX export, tools/demo.py and :class:`CheckpointFitsModelHook` (``load_from``,
``--resume``, tools/test.py, ``--skip-mismatched``) all read that one report.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from mmengine.hooks import Hook

from ..errors import CheckpointMismatchError
from ..registry import HOOKS

_DDP_PREFIX = 'module.'
_CONTAINER_KEYS = ('state_dict', 'model', 'module', 'model_state')


def extract_state_dict(checkpoint) -> dict:
    """The tensor dict inside a loaded checkpoint.

    Args:
        checkpoint (dict): a checkpoint with ``state_dict`` / ``model`` / ``module`` /
            ``model_state``, or a bare state dict.

    Returns:
        dict: the state dict (the object inside ``checkpoint``, not a copy).
    """
    for key in _CONTAINER_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if isinstance(checkpoint, dict):
        return checkpoint
    raise TypeError(f'expected a dict checkpoint, got {type(checkpoint).__name__}')


def unwrap_model(model):
    """The model inside mmengine's wrappers (DDP and the like) and test-time augmentation.

    Args:
        model (nn.Module): a model, possibly wrapped.

    Returns:
        nn.Module: the innermost model.
    """
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def strip_module_prefix(key: str) -> str:
    """``key`` without a leading DDP ``module.``.

    Args:
        key (str): a state-dict key.

    Returns:
        str: the key as the unwrapped model names it.
    """
    return key[len(_DDP_PREFIX):] if key.startswith(_DDP_PREFIX) else key


def truncated(items: Sequence[str], limit: int) -> List[str]:
    """The first ``limit`` of ``items``, then ``'... (N more)'`` when some are left out.

    Args:
        items (Sequence[str]): what to list.
        limit (int): how many to show.

    Returns:
        list[str]: the items to print, joined by the caller.
    """
    left = len(items) - limit
    return list(items[:limit]) + ([f'... ({left} more)'] if left > 0 else [])


def counted(title: str, keys: Sequence[str], limit: int = 10) -> str:
    """``'<N> <title>: a, b, ... (M more)'`` (just ``'0 <title>'`` for no keys).

    Args:
        title (str): what the keys are.
        keys (Sequence[str]): the keys.
        limit (int): how many to name.

    Returns:
        str: one line.
    """
    return f'{len(keys)} {title}' + (f': {", ".join(truncated(keys, limit))}' if keys else '')


class FitReport(NamedTuple):
    """How a state dict fits a model; every list in checkpoint order except ``missing``.

    Attributes:
        model_name (str): class name of the unwrapped model.
        model_keys (list[str]): the model's state-dict keys.
        checkpoint_keys (list[str]): the checkpoint's tensor keys, ``module.`` stripped.
        missing (list[str]): model keys the checkpoint lacks (``num_batches_tracked`` excepted).
        unexpected (list[str]): checkpoint keys the model does not have.
        mismatched (list[tuple]): (key, checkpoint shape, model shape) of tensors whose
            shapes differ.
    """
    model_name: str
    model_keys: List[str]
    checkpoint_keys: List[str]
    missing: List[str]
    unexpected: List[str]
    mismatched: List[Tuple[str, tuple, tuple]]

    @property
    def shares_names(self) -> bool:
        """bool: whether the two share a tensor name (or either one is empty)."""
        return not (self.model_keys and self.checkpoint_keys) or \
            len(self.checkpoint_keys) > len(self.unexpected)

    def mismatch_lines(self, limit: Optional[int] = None) -> List[str]:
        """list[str]: ``'key: checkpoint (a, b) vs model (c, d)'`` per mismatched tensor."""
        lines = [f'{k}: checkpoint {c} vs model {m}' for k, c, m in self.mismatched]
        return lines if limit is None else truncated(lines, limit)


def checkpoint_tensors(checkpoint) -> Dict[str, object]:
    """The tensors of a loaded checkpoint or state dict, keyed without a DDP ``module.``.

    Args:
        checkpoint (dict): a Runner checkpoint (``state_dict`` / ``model`` inside) or a bare
            state dict.

    Returns:
        dict: key -> tensor (values without a shape are left out).
    """
    return {strip_module_prefix(k): v for k, v in extract_state_dict(checkpoint).items()
            if hasattr(v, 'shape')}


def fit_report(model, checkpoint) -> FitReport:
    """Compare ``model`` with the tensors of ``checkpoint``.

    Args:
        model (nn.Module): the model, possibly wrapped.
        checkpoint (dict): a loaded checkpoint or a state dict.

    Returns:
        FitReport: what is missing, unexpected or of another shape.
    """
    model = unwrap_model(model)
    own = model.state_dict()
    theirs = checkpoint_tensors(checkpoint)
    return FitReport(
        model_name=type(model).__name__, model_keys=list(own), checkpoint_keys=list(theirs),
        missing=[k for k in own if k not in theirs and not k.endswith('num_batches_tracked')],
        unexpected=[k for k in theirs if k not in own],
        mismatched=[(k, tuple(v.shape), tuple(own[k].shape)) for k, v in theirs.items()
                    if k in own and tuple(v.shape) != tuple(own[k].shape)])


def check_checkpoint_fits(model, checkpoint, filename, skip_mismatched: bool = False,
                          require_all: bool = False, limit: int = 20,
                          partial_hint: bool = False) -> FitReport:
    """Raise ``ValueError`` naming the keys and both shapes when ``checkpoint`` does not fit.

    Always an error: no tensor name in common (a checkpoint of another model). Unless
    ``skip_mismatched``: a tensor whose shape differs. With ``require_all``: a model tensor
    missing from the checkpoint.

    Args:
        model (nn.Module): the model, possibly wrapped.
        checkpoint (dict): a loaded Runner checkpoint or a bare state dict.
        filename (str): named in the messages.
        skip_mismatched (bool): tolerate tensors of another shape.
        require_all (bool): every model tensor must be in the checkpoint.
        limit (int): how many keys a message names.
        partial_hint (bool): suggest ``--skip-mismatched`` for missing tensors too.

    Returns:
        FitReport: the report the decision was made on.
    """
    report = fit_report(model, checkpoint)
    name = report.model_name
    if not report.shares_names:
        raise CheckpointMismatchError(
            f'Checkpoint {filename} shares no tensor name with this {name}: it is a checkpoint '
            f'of another model. Its keys look like {", ".join(report.checkpoint_keys[:3])}; the '
            f'model\'s like {", ".join(report.model_keys[:3])}. Give a checkpoint trained with '
            f'this config, or convert a backbone checkpoint with tools/convert_checkpoint.py '
            f'--add-prefix backbone.')
    if report.mismatched and not skip_mismatched:
        raise CheckpointMismatchError(
            f'Checkpoint {filename} does not fit this {name}: {len(report.mismatched)} tensor(s) '
            f'have another shape (another arch or number of classes?):\n  ' +
            '\n  '.join(report.mismatch_lines(limit)) +
            '\nUse the checkpoint of this config; to fine-tune from it anyway with the '
            'mismatched tensors left at their initial values, pass --skip-mismatched to '
            'tools/train.py (load_from only).')
    if report.missing and require_all:
        raise CheckpointMismatchError(
            f'Checkpoint {filename} lacks {len(report.missing)} of the '
            f'{len(report.model_keys)} tensors of this {name}, which would stay at their '
            f'initial values:\n  ' + '\n  '.join(truncated(report.missing, limit)) +
            '\nGive the checkpoint written by training this config' +
            ('; to fine-tune from it anyway with those tensors left at their initial values, '
             'pass --skip-mismatched to tools/train.py.' if partial_hint else '.'))
    return report


def skip_mismatched_tensors(model, checkpoint: dict,
                            report: Optional[FitReport] = None) -> List[tuple]:
    """Remove from ``checkpoint``'s state dict every tensor whose shape differs from the model's.

    Args:
        model (nn.Module): the model, possibly wrapped.
        checkpoint (dict): a loaded checkpoint or state dict, changed in place.
        report (FitReport, optional): :func:`fit_report` of the two, if already made.

    Returns:
        list[tuple]: (key, checkpoint shape, model shape) of each removed tensor, in
        checkpoint order.
    """
    report = report or fit_report(model, checkpoint)
    skip = {key for key, _, _ in report.mismatched}
    state_dict = extract_state_dict(checkpoint)
    for key in [k for k in state_dict if strip_module_prefix(k) in skip]:
        del state_dict[key]
    return list(report.mismatched)


def load_summary(filename: str, num_loaded: int, missing: Sequence[str],
                 unexpected: Sequence[str], limit: int = 10,
                 layout: Optional[str] = None) -> str:
    """One readable paragraph about a checkpoint load.

    Args:
        filename (str): the checkpoint.
        num_loaded (int): tensors given to the model, unexpected ones included.
        missing (Sequence[str]): model keys the checkpoint lacked.
        unexpected (Sequence[str]): checkpoint keys the model ignored.
        limit (int): how many keys to name per list.
        layout (str, optional): the :data:`~.layouts.LAYOUTS` name it was read as.

    Returns:
        str: the summary.
    """
    read_as = f' (layout: {layout})' if layout else ''
    lines = [f'Loaded {num_loaded - len(unexpected)} tensors from {filename}{read_as}.']
    for title, keys in (('missing in checkpoint (kept at init)', missing),
                        ('unexpected in checkpoint (ignored)', unexpected)):
        if keys:
            lines.append(counted(f'key(s) {title}', keys, limit))
    return '\n'.join(lines)


@HOOKS.register_module()
class CheckpointFitsModelHook(Hook):
    """Stop with an error when a ``load_from`` / ``--resume`` / tools/test.py checkpoint does
    not fit the model (mmengine only warns and leaves mismatched tensors at their init).

    An official trained ConvNeXt COCO / ADE20K checkpoint (written by mmcv 1.x) is first
    adapted in place (:func:`convnext_dense.checkpoint.official.adapt_checkpoint`).

    Args:
        skip_mismatched (bool): for ``load_from`` only (never for a resume), load the tensors
            that fit and leave the others (fine-tuning to another number of classes). The
            skipped tensors are taken out of the checkpoint, logged by name with both shapes
            and kept in :attr:`skipped`.
        require_all (bool): every model tensor must be in the checkpoint (testing). A resume
            and a ``load_from`` without ``skip_mismatched`` require it too.
    """

    priority = 'VERY_HIGH'

    def __init__(self, skip_mismatched: bool = False, require_all: bool = False) -> None:
        self.skip_mismatched = skip_mismatched
        self.require_all = require_all
        #: (key, checkpoint shape, model shape) of each tensor the last load skipped
        self.skipped: List[tuple] = []

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        from .atomic import find_latest_checkpoint
        from .official import adapt_checkpoint
        resume = bool(getattr(runner, '_resume', False))
        filename = getattr(runner, '_load_from', None)
        if filename is None and resume:  # --resume without a path: the newest in the work dir
            filename = find_latest_checkpoint(runner.work_dir)
        adapt_checkpoint(runner.model, checkpoint, filename, resume=resume,
                         logger=runner.logger)
        skip = self.skip_mismatched and not resume
        # load_from, like resume and tools/test.py, must fill the whole model unless the user
        # asked for partial loading (--skip-mismatched)
        report = check_checkpoint_fits(runner.model, checkpoint, filename, skip_mismatched=skip,
                                       require_all=self.require_all or not skip,
                                       partial_hint=not (resume or self.require_all))
        self.skipped = skip_mismatched_tensors(runner.model, checkpoint, report) if skip else []
        if self.skipped:
            runner.logger.warning(
                f'--skip-mismatched: {len(self.skipped)} tensor(s) of {filename} have another '
                f'shape than the model and were not loaded (they keep their initial '
                f'values):\n  ' + '\n  '.join(report.mismatch_lines()))
