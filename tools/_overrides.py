"""``--cfg-options`` that reach every place a config variable was used, and config-file
mistakes reported as one line with a suggestion.

A config file's top-level variable (``max_iters = 1000`` used as
``train_cfg = dict(max_iters=max_iters)`` and ``PolyLR(end=max_iters)``) is read only while
mmengine parses the file: overriding the variable afterwards changes nothing else. Here such an
override re-reads the config with the variable's assignment replaced, in a temporary copy of
the config files (:func:`reparse_with_variables`), exactly as if the user had edited the file;
what changed is logged. Keys that mmengine's Runner reads itself (``model``, ``train_cfg``,
``load_from``, ...) are merged as before.

:func:`explain_build_error` turns a registry's unknown ``type`` or a class's unexpected
argument, raised while the model or a dataset is built, into one line naming the config key and
the closest valid name.
"""
import ast
import copy
import difflib
import os
import os.path as osp
import re
import tempfile
from typing import Dict, List, Optional, Tuple

#: top-level keys that mmengine's Runner, mmdet / mmseg or our tools read themselves
RUNNER_KEYS = frozenset({
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler',
    'val_evaluator', 'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor',
    'load_from', 'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer',
    'default_scope', 'randomness', 'experiment_name', 'runner_type', 'model_wrapper_cfg',
    'find_unused_parameters', 'custom_imports', 'compile', 'strategy', 'cfg', 'tta_model',
    'tta_pipeline', 'tta_test_cfg'})


from convnext_dense.errors import ConfigError  # noqa: E402  (a config or --cfg-options mistake)


# ----------------------------------------------------------------------------- variables
def config_files(path: str) -> List[str]:
    """The local files of a config's inheritance chain (``path`` first); bases of other
    packages (``mmdet::...``) are left out."""
    from mmengine.config import Config
    path = osp.abspath(path)
    files = [path]
    for base in Config._get_base_files(path):
        base_path, scope = Config._get_cfg_path(base, path)
        if scope is None:
            files += [f for f in config_files(base_path) if f not in files]
    return files


def _value_spans(source: str, names) -> List[Tuple[int, int, str]]:
    """``(start, end, name)`` character spans of the values of the top-level assignments
    ``name = ...`` in ``source``."""
    tree = ast.parse(source)
    starts, position = [], 0
    lines = source.splitlines(keepends=True)
    for line in lines:
        starts.append(position)
        position += len(line)

    def offset(lineno, col):  # ast columns count UTF-8 bytes
        line = lines[lineno - 1]
        return starts[lineno - 1] + len(line.encode('utf-8')[:col].decode('utf-8'))

    spans = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) and node.value else []
        for target in targets:
            if isinstance(target, ast.Name) and target.id in names:
                value = node.value
                spans.append((offset(value.lineno, value.col_offset),
                              offset(value.end_lineno, value.end_col_offset), target.id))
    return spans


def _plain(value):
    if hasattr(value, 'to_dict'):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def reparse_with_variables(config_path: str, values: Dict[str, object]):
    """The config at ``config_path`` read with each top-level assignment ``name = ...`` of
    ``values`` (in any file of its local chain) replaced by ``name = values[name]``.
    Raises :class:`ConfigError` for a variable that no local file assigns."""
    from mmengine.config import Config
    files = config_files(config_path)
    root = osp.commonpath([osp.dirname(f) for f in files])
    assigned = set()
    with tempfile.TemporaryDirectory(prefix='cfg_options_') as tmp:
        copies = {path: osp.join(tmp, osp.relpath(path, root)) for path in files}
        for path in files:
            with open(path, encoding='utf-8') as f:
                source = f.read()
            try:
                spans = _value_spans(source, values)
            except SyntaxError as error:
                raise ConfigError(f'{path} cannot be read as Python ({error.msg}, line '
                                  f'{error.lineno}); set the keys that use its variables '
                                  f'instead.') from error
            for start, end, name in sorted(spans, reverse=True):
                source = source[:start] + repr(_plain(values[name])) + source[end:]
                assigned.add(name)
            for original, copy_path in copies.items():  # _base_ given as an absolute path
                for quote in ("'", '"'):
                    source = source.replace(f'{quote}{original}{quote}',
                                            f'{quote}{copy_path}{quote}')
            target = copies[path]
            os.makedirs(osp.dirname(target), exist_ok=True)
            with open(target, 'w', encoding='utf-8') as f:
                f.write(source)
        missing = sorted(set(values) - assigned)
        if missing:
            raise ConfigError(
                f'--cfg-options {missing[0]}: {config_path} takes {missing[0]} from a config '
                f'outside its folder tree (another package); set the keys that use it '
                f'instead.')
        parsed = Config.fromfile(copies[osp.abspath(config_path)])
        for name, value in values.items():
            if _plain(parsed.get(name)) != _plain(value):
                raise ConfigError(
                    f'--cfg-options {name}: {config_path} could not be re-read with the new '
                    f'value (its files name {name} in a way this tool does not follow); set '
                    f'the keys that use it instead.')
        return Config(parsed.to_dict(), filename=osp.abspath(config_path))


def _flatten(node, prefix='') -> dict:
    if isinstance(node, dict):
        items = {}
        for key, value in node.items():
            items.update(_flatten(value, f'{prefix}{key}.'))
        return items or {prefix[:-1]: {}}
    if isinstance(node, (list, tuple)) and any(isinstance(v, (dict, list, tuple))
                                              for v in node):
        items = {}
        for i, value in enumerate(node):
            items.update(_flatten(value, f'{prefix}{i}.'))
        return items
    return {prefix[:-1]: node}


def is_variable(cfg, key: str) -> bool:
    """Whether the top-level part of ``key`` is a config variable: a top-level key of
    ``cfg`` that no runner reads itself."""
    top = key.split('.', 1)[0]
    return top in cfg and top not in RUNNER_KEYS


def _set_nested(value, parts, new):
    if not parts:
        return new
    node = value
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = new
    else:
        node[last] = new
    return value


def apply_variables(cfg, config_path: str, options: dict):
    """Apply the ``options`` whose top-level key is a config variable by re-reading the
    config (:func:`reparse_with_variables`). Returns the new config, the options left to merge
    and one note per variable saying where it was used."""
    grouped: Dict[str, object] = {}
    rest = {}
    for key, value in options.items():
        if not is_variable(cfg, key):
            rest[key] = value
            continue
        top, _, sub = key.partition('.')
        old = grouped.get(top, copy.deepcopy(_plain(cfg[top])))
        if not sub and isinstance(old, str) and old.endswith('/') and \
                isinstance(value, str) and value and not value.endswith('/'):
            value += '/'  # a folder prefix (data_root + 'annotations/...')
        grouped[top] = _set_nested(old, sub.split('.') if sub else [], value)
    if not grouped:
        return cfg, rest, []
    new = reparse_with_variables(config_path, grouped)
    before, after = _flatten(_plain(cfg._cfg_dict)), _flatten(_plain(new._cfg_dict))
    changed = [key for key in after if key not in before or before[key] != after[key]]
    changed += [key for key in before if key not in after]
    used = [key for key in changed if key.split('.')[0] not in grouped]
    where = ', '.join(used[:8]) + (f', ... ({len(used) - 8} more)' if len(used) > 8 else '') \
        if used else 'no other key (unused variables)'
    assigned = ', '.join(f'{name} = {_plain(value)!r}' for name, value in grouped.items())
    return new, rest, [f'--cfg-options: {config_path} re-read with {assigned}; that changed '
                       f'{where}']


def same_named_keys(cfg, name: str) -> List[str]:
    """Key paths (``model.roi_head.bbox_head.0.num_classes``) whose last part is ``name``."""
    return [key for key in _flatten(_plain(cfg._cfg_dict))
            if key.rsplit('.', 1)[-1] == name and '.' in key]


# ----------------------------------------------------------------------------- build errors
_UNKNOWN_TYPE = re.compile(r"^'?(\S+) is not in the (\w+)::(.+?) registry")
_UNEXPECTED_ARG = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument "
                             r"'(\w+)'")


def _dicts(node, parts=()):
    """``(path, dict)`` of every dict in a config tree."""
    if isinstance(node, dict):
        yield parts, node
        for key, value in node.items():
            yield from _dicts(value, parts + (str(key),))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _dicts(value, parts + (str(i),))


def _registered_names(scope: str, registry_name: str) -> List[str]:
    """Names that ``type=`` finds in the registry ``registry_name`` of ``scope``: its own, its
    parent's, and ``<scope>.<name>`` of the parent's other children (e.g. our
    ``convnext_dense.ConvNeXt``)."""
    import importlib
    try:
        module = importlib.import_module(f'{scope}.registry')
    except ImportError:
        return []
    registry = next((r for r in vars(module).values()
                     if getattr(r, 'name', None) == registry_name
                     and getattr(r, 'scope', None) == scope
                     and hasattr(r, 'module_dict')), None)
    if registry is None:
        return []
    names = list(registry.module_dict)
    parent = registry.parent
    if parent is not None:
        names += list(parent.module_dict)
        for child_scope, child in parent.children.items():
            if child is not registry:
                names += [f'{child_scope}.{n}' for n in child.module_dict]
    return names


def _closest(name: str, candidates: List[str]) -> Optional[str]:
    """The candidate closest to ``name``, comparing without scope prefix and case."""
    bare = {}
    for candidate in candidates:
        bare.setdefault(candidate.rsplit('.', 1)[-1].lower(), []).append(candidate)
    found = difflib.get_close_matches(name.rsplit('.', 1)[-1].lower(), list(bare), n=1,
                                      cutoff=0.75)
    if not found:
        return None
    options = bare[found[0]]
    return min(options, key=lambda c: ('.' in c, len(c)))


def _arguments(cls) -> List[str]:
    import inspect
    names = []
    for klass in getattr(cls, '__mro__', [cls]):
        init = vars(klass).get('__init__')
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names += [p.name for p in parameters if p.name != 'self' and
                  p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def explain_build_error(error: BaseException, cfg, config_path: str) -> Optional[str]:
    """One line for a registry's unknown ``type`` or a class's unexpected argument raised
    while building from ``cfg``, naming the config key and the closest valid name; None for
    any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        match = _UNKNOWN_TYPE.match(text)
        if isinstance(error, KeyError) and match:
            kind, scope, registry = match.groups()
            paths = sorted(('.'.join(p) for p, d in _dicts(_plain(cfg._cfg_dict))
                            if d.get('type') == kind),
                           key=lambda p: p.split('.')[0] not in RUNNER_KEYS)
            where = f'{paths[0]}.type' if paths else 'a type'
            close = _closest(kind, _registered_names(scope, registry))
            hint = f'; did you mean {close!r}?' if close else \
                '; check the spelling, or import the module that registers it ' \
                '(custom_imports)'
            return (f'{config_path}: {where} is {kind!r}, which is not in the {scope} '
                    f'{registry} registry{hint}')
        match = _UNEXPECTED_ARG.search(text)
        if isinstance(error, TypeError) and match:
            cls_name, argument = match.groups()
            nodes = sorted(_dicts(_plain(cfg._cfg_dict)),
                           key=lambda item: not item[0] or item[0][0] not in RUNNER_KEYS)
            for parts, node in nodes:
                kind = node.get('type')
                if argument in node and isinstance(kind, str) and \
                        kind.rsplit('.', 1)[-1] == cls_name:
                    path = '.'.join(parts)
                    cls = _registered_class(kind, node.get('_scope_'))
                    close = difflib.get_close_matches(argument, _arguments(cls), n=1,
                                                      cutoff=0.75) if cls else []
                    hint = f'; did you mean {path}.{close[0]}?' if close else \
                        (f'; its arguments are {", ".join(_arguments(cls))}' if cls else '')
                    return (f'{config_path}: {path}.{argument} is not an argument of '
                            f'{kind}{hint}')
        error = error.__cause__ or error.__context__
    return None


def _registered_class(kind: str, scope=None):
    from mmengine.registry import MODELS, TRANSFORMS
    for registry in (MODELS, TRANSFORMS):
        try:
            with registry.switch_scope_and_registry(scope) as found:
                cls = found.get(kind)
        except Exception:
            cls = None
        if cls is not None:
            return cls
    return None


def check_model_builds(cfg, config_path: str) -> None:
    """Build ``cfg.model`` on the meta device (shapes only: no memory, no initialisation),
    so that a config mistake stops before the Runner logs the config and builds everything:
    an unknown type or argument as one line (:func:`explain_build_error`), an error our
    package raises on purpose (e.g. an unknown ConvNeXt arch) as it is. Anything else is left
    to the real build."""
    import torch
    from mmengine.registry import MODELS
    try:
        with torch.device('meta'):
            MODELS.build(copy.deepcopy(cfg.model))
    except Exception as error:  # noqa: BLE001 - sorted below
        message = explain_build_error(error, cfg, config_path)
        if message:
            raise ConfigError(message) from error
        from _common import expected_error
        if expected_error(error) is not None:
            raise
