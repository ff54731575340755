"""Write a config that fine-tunes a recipe on your own COCO-format or ADE20K-format dataset.

    python tools/new_dataset_config.py RECIPE --data-root DIR [--classes A B C ...]
        [--out my_config.py] [--train-ann FILE --train-images DIR] [--val-ann FILE
        --val-images DIR] [--train-split NAME --val-split NAME] [--zero-label {ignore,class}]
        [--no-pretrained] [--batch-size N] [--workers N]

RECIPE is a detection config (COCO format under --data-root: a COCO instances JSON and an
image folder per split; the recipe's layout, e.g. annotations/instances_train2017.json and
train2017/, unless --train-ann / --train-images / --val-ann / --val-images say otherwise)
or a segmentation config (ADE20K format: images/<split>/*.jpg and annotations/<split>/*.png
with the label of each pixel, 0 = "other", ignored, and k = the k-th class, as in ADE20K;
--zero-label class makes 0 the first class instead).

The written child config inherits everything from the recipe and sets:
- num_classes in every head (the three cascade stages and the mask head; Mask2Former's
  things/stuff counts and its per-class loss weights; DINO's head; UperNet's decode and
  auxiliary heads);
- metainfo (classes, palette), data_root, annotation files and image folders on the train,
  val and test datasets, and the evaluators' annotation files under the new data root;
- optionally no ImageNet download (--no-pretrained), batch size and data workers.

For COCO, --classes defaults to every category of the training annotation file; the names
are kept in the file's category order (mmdet numbers the labels in that order). Then
``python tools/train.py my_config.py`` trains it; tools/train.py checks the classes against
the heads and the annotation file before the first iteration.
"""
import argparse
import colorsys
import json
import os
import os.path as osp
import shlex
import sys

from _common import add_debug_arg, run_tool
from convnext_dense.errors import ConfigError, MissingFileError


class RecipeError(ConfigError):
    """A recipe or dataset this tool cannot write a config for (one line, exit status 2)."""


class Code(str):
    """Python source to write as it is (not quoted)."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write a child config of RECIPE for your own COCO-format (detection) or '
        'ADE20K-format (segmentation) dataset, with num_classes in every head')
    parser.add_argument('recipe', help='the config to fine-tune, e.g. '
                        'configs/detection/cascade_convnext_t_coco.py')
    parser.add_argument('--data-root', required=True, help='the folder of your dataset')
    parser.add_argument('--classes', nargs='+', metavar='NAME',
                        help='class names (COCO: category names of the annotation file; '
                        'default: all of them. ADE20K format: required, label k = the k-th '
                        'name)')
    parser.add_argument('--out', help='the config file to write (default: '
                        '<recipe name>_<data folder name>.py in the current folder)')
    coco = parser.add_argument_group('COCO format (detection recipes), relative to --data-root')
    coco.add_argument('--train-ann', help="default: the recipe's, e.g. "
                      'annotations/instances_train2017.json')
    coco.add_argument('--train-images', help="default: the recipe's, e.g. train2017/")
    coco.add_argument('--val-ann', help="default: the recipe's, e.g. "
                      'annotations/instances_val2017.json')
    coco.add_argument('--val-images', help="default: the recipe's, e.g. val2017/")
    ade = parser.add_argument_group('ADE20K format (segmentation recipes)')
    ade.add_argument('--train-split', default='training',
                     help='images/<split> and annotations/<split> (default: training)')
    ade.add_argument('--val-split', default='validation', help='(default: validation)')
    ade.add_argument('--zero-label', choices=['ignore', 'class'], default='ignore',
                     help="label 0 of the maps: 'ignore' (ADE20K's \"other\"; label k is "
                     "the k-th class) or 'class' (0 is the first class)")
    run = parser.add_argument_group('training')
    run.add_argument('--no-pretrained', action='store_true',
                     help='do not load the ImageNet backbone weights (offline; trains from '
                     'scratch, which needs far more data and iterations)')
    run.add_argument('--batch-size', type=int, help='images per GPU / process')
    run.add_argument('--workers', type=int, help='data loading processes per GPU / process '
                     '(0: load in the main process)')
    add_debug_arg(parser)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- emitting code
def _emit(base, tree, base_expr: str, copy: bool) -> str:
    """Python source for the override ``tree`` of the recipe value ``base`` (``base_expr``
    reads it through ``_base_``). Dicts outside lists are merged by mmengine; inside a list
    nothing is merged, so each entry is rebuilt from ``_base_`` (``copy``)."""
    if isinstance(tree, Code):
        return str(tree)
    if isinstance(tree, dict) and isinstance(base, (list, tuple)):
        items = []
        for i, entry in enumerate(base):
            items.append(_emit(entry, tree[i], f'{base_expr}[{i}]', True) if i in tree
                         else f'{base_expr}[{i}]')
        return '[' + ', '.join(items) + ']'
    if isinstance(tree, dict):
        base = base if isinstance(base, dict) else {}
        items = [f'{key}={_emit(base.get(key), sub, f"{base_expr}.{key}", copy)}'
                 for key, sub in tree.items()]
        return f'dict({base_expr}, ' + ', '.join(items) + ')' if copy and base \
            else 'dict(' + ', '.join(items) + ')'
    return repr(tree)


def _set(tree: dict, parts, value) -> None:
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def _split_path(path: str):
    return [int(p) if p.isdigit() else p for p in path.split('.')]


def _format(source: str) -> str:
    try:
        from yapf.yapflib.yapf_api import FormatCode
        style = dict(based_on_style='pep8', column_limit=99,
                     split_before_expression_after_opening_paren=True)
        return FormatCode(source, style_config=style)[0]
    except Exception:  # yapf missing or another version: the source as it is
        return source


# ----------------------------------------------------------------------------- the dataset
def _palette(n: int):
    """``n`` distinct, bright colours (hues evenly spaced)."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _leaf_path(cfg, split: str):
    """Key path (list) to the innermost dataset of ``<split>_dataloader``, and that dataset."""
    parts, node = [f'{split}_dataloader', 'dataset'], cfg.get(f'{split}_dataloader', {})
    node = node.get('dataset') if isinstance(node, dict) else None
    while isinstance(node, dict) and isinstance(node.get('dataset'), dict):
        parts.append('dataset')
        node = node['dataset']
    return parts, node


def _coco_categories(ann_file: str):
    try:
        with open(ann_file, encoding='utf-8') as f:
            data = json.load(f)
        return [(cat['id'], cat['name']) for cat in data['categories']]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RecipeError(f'{ann_file} is not a COCO annotation file with categories '
                          f'({type(error).__name__}: {error}).') from error


def _relative(path: str, root: str, option: str, what: str, hint: str = '') -> str:
    if not osp.exists(osp.join(root, path)):
        raise RecipeError(f'{osp.join(root, path)} does not exist ({what}); give {option} '
                          f'PATH relative to --data-root {root}{hint}.')
    return path


def _coco_paths(cfg, args, root: str) -> dict:
    """{split: (ann_file, image folder)} relative to ``root``, checked to exist."""
    found = {}
    for split, ann_opt, img_opt in (('train', '--train-ann', '--train-images'),
                                    ('val', '--val-ann', '--val-images')):
        _, dataset = _leaf_path(cfg, split)
        prefix = (dataset or {}).get('data_prefix') or {}
        ann = getattr(args, f'{split}_ann') or (dataset or {}).get('ann_file')
        images = getattr(args, f'{split}_images') or prefix.get('img')
        if not ann or not images:
            raise RecipeError(f'{args.recipe} names no {split} annotation file or image '
                              f'folder; give {ann_opt} and {img_opt}.')
        hint = ' (the training ones validate on the training images)' if split == 'val' \
            else ''
        _relative(ann, root, ann_opt, f"the recipe's {split} annotation file", hint)
        _relative(images, root, img_opt, f"the recipe's {split} image folder", hint)
        found[split] = (ann, images.rstrip('/') + '/')
    return found


def _coco_classes(args, ann_file: str, shown: str):
    """The class names in the file's order (``shown``: the file as the user named it) and a
    note when they were reordered."""
    categories = _coco_categories(ann_file)
    names = [name for _, name in categories]
    if not args.classes:
        return names, None
    missing = [name for name in args.classes if name not in names]
    if missing:
        import difflib
        close = [difflib.get_close_matches(m, names, n=1, cutoff=0.6) for m in missing]
        hint = ''.join(f' ({m!r}: did you mean {c[0]!r}?)' for m, c in zip(missing, close) if c)
        raise RecipeError(f'--classes: {", ".join(map(repr, missing))} not among the '
                          f'{len(names)} categories of {shown}{hint}; they are: '
                          f'{", ".join(names)}.')
    if len(set(args.classes)) != len(args.classes):
        raise RecipeError('--classes names a class twice.')
    ordered = [name for name in names if name in set(args.classes)]
    note = None if ordered == list(args.classes) else (
        f'classes kept in the order of the categories of {shown}: {" ".join(ordered)}')
    return ordered, note


# ----------------------------------------------------------------------------- the config
def build_overrides(cfg, args, root: str):
    """The override tree of the child config, its top-level variables, and notes."""
    from convnext_dense.datasets.classes import _class_weights, head_class_counts
    scope = cfg.get('default_scope')
    notes, tree = [], {}
    if scope == 'mmdet':
        paths = _coco_paths(cfg, args, root)
        classes, note = _coco_classes(args, osp.join(root, paths['train'][0]),
                                      osp.join(args.data_root, paths['train'][0]))
        if note:
            notes.append(note)
    elif scope == 'mmseg':
        if not args.classes:
            raise RecipeError('--classes: give the class names of your ADE20K-format '
                              'dataset (label k of the maps = the k-th name, or the (k+1)-th '
                              'with --zero-label class).')
        classes = list(args.classes)
        for split in (args.train_split, args.val_split):
            for folder in (f'images/{split}', f'annotations/{split}'):
                _relative(folder, root, '--train-split / --val-split', 'ADE20K layout')
    else:
        raise RecipeError(f"{args.recipe}: default_scope is {scope!r}; this tool writes "
                          f"configs for 'mmdet' (COCO format) and 'mmseg' (ADE20K format) "
                          f"recipes.")

    heads = head_class_counts(cfg.model)
    if not heads:
        raise RecipeError(f'{args.recipe}: no head with num_classes in model.')
    for path, _ in heads:
        parts = _split_path(path)[1:]
        _set(tree.setdefault('model', {}), parts, Code('num_classes'))
        if parts[-1] == 'num_things_classes':
            _set(tree['model'], parts[:-1] + ['num_stuff_classes'], 0)
    for path, entries, _ in _class_weights(cfg.model):
        parts = _split_path(path)[1:]
        node = cfg.model
        for part in parts:
            node = node[part]
        _set(tree['model'], parts, Code(f'[{node[0]!r}] * num_classes + [{node[-1]!r}]'))
    if args.no_pretrained:
        def strip(node, parts):
            if isinstance(node, dict):
                if isinstance(node.get('init_cfg'), dict) and \
                        node['init_cfg'].get('type') == 'Pretrained':
                    _set(tree['model'], parts + ['init_cfg'], None)
                for key, value in node.items():
                    strip(value, parts + [key])
            elif isinstance(node, (list, tuple)):
                for i, value in enumerate(node):
                    strip(value, parts + [i])
        strip(cfg.model, [])

    for split in ('train', 'val', 'test'):
        parts, dataset = _leaf_path(cfg, split)
        if dataset is None:
            continue
        over = dict(data_root=Code('data_root'), metainfo=Code('metainfo'))
        if scope == 'mmdet':
            ann, images = paths['train' if split == 'train' else 'val']
            over.update(ann_file=ann, data_prefix=dict(img=images))
        else:
            name = args.train_split if split == 'train' else args.val_split
            over.update(type='BaseSegDataset', img_suffix='.jpg', seg_map_suffix='.png',
                        reduce_zero_label=args.zero_label == 'ignore',
                        data_prefix=dict(img_path=f'images/{name}',
                                         seg_map_path=f'annotations/{name}'))
        for key, value in over.items():
            _set(tree, parts + [key], value)
        loader = tree[f'{split}_dataloader']
        if args.batch_size and split == 'train':
            loader['batch_size'] = args.batch_size
        if args.workers is not None:
            loader['num_workers'] = args.workers
            loader['persistent_workers'] = args.workers > 0
    for key in ('val_evaluator', 'test_evaluator'):
        evaluators = cfg.get(key)
        for i, evaluator in enumerate(evaluators if isinstance(evaluators, list)
                                      else [evaluators]):
            if isinstance(evaluator, dict) and evaluator.get('ann_file'):
                parts = [key, i] if isinstance(evaluators, list) else [key]
                _set(tree, parts + ['ann_file'],
                     Code(f'data_root + {paths["val"][0]!r}'))
    return classes, tree, notes


def write_config(cfg, args, out: str, root: str) -> list:
    """Write the child config to ``out``; return the notes to print."""
    classes, tree, notes = build_overrides(cfg, args, root)
    base = osp.relpath(osp.abspath(args.recipe), osp.dirname(osp.abspath(out)))
    kind = 'COCO' if cfg.default_scope == 'mmdet' else 'ADE20K'
    command = ' '.join(shlex.quote(a) for a in ['tools/new_dataset_config.py'] + sys.argv[1:]) \
        if sys.argv and sys.argv[0].endswith('new_dataset_config.py') else \
        'tools/new_dataset_config.py'
    lines = [
        f'# {osp.basename(args.recipe)} for your {kind}-format dataset in',
        f'# {root} ({len(classes)} classes). Written by',
        f'#   python {command}',
        '# Train with: python tools/train.py ' + out,
        f'_base_ = {base!r}',
        f'data_root = {root.rstrip("/") + "/"!r}',
        f'classes = {tuple(classes)!r}',
        f'metainfo = dict(classes=classes, palette={_palette(len(classes))!r})',
        'num_classes = len(classes)',
    ]
    for key, sub in tree.items():
        code = _emit(cfg.get(key), sub, f'_base_.{key}', False)
        lines.append(f'{key} = {code}')
    source = _format('\n'.join(lines) + '\n')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w', encoding='utf-8') as f:
        f.write(source)
    return notes


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.recipe):
        raise MissingFileError(f'recipe {args.recipe} does not exist; give a config, e.g. '
                               f'configs/detection/cascade_convnext_t_coco.py')
    root = osp.abspath(osp.expanduser(args.data_root))
    if not osp.isdir(root):
        raise MissingFileError(f'--data-root {args.data_root} does not exist; point it at '
                               f'the folder of your dataset.')
    from mmengine.config import Config
    cfg = Config.fromfile(args.recipe)
    out = args.out or (osp.splitext(osp.basename(args.recipe))[0] + '_'
                       + osp.basename(root.rstrip('/')) + '.py')
    for note in write_config(cfg, args, out, root):
        print(f'note: {note}')
    # read back: the written file parses, and its heads and datasets agree
    from convnext_dense.datasets.classes import check_classes, head_class_counts
    from mmengine.registry import init_default_scope
    written = Config.fromfile(out)
    init_default_scope(written.default_scope)
    check_classes(written)
    heads = head_class_counts(written.model)
    print(f'wrote {out}: {len(written.classes)} classes ({", ".join(written.classes)}) in '
          f'{len(heads)} head(s) ({", ".join(p[len("model."):] for p, _ in heads)})')
    print(f'train it with: python tools/train.py {out}')


if __name__ == '__main__':
    run_tool(main)
