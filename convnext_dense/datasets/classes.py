"""The dataset's classes against the model's heads and the annotation file, checked before
training starts.

A config whose heads predict another number of classes than its dataset names trains a whole
epoch with mmdet and then fails in the evaluator (``IndexError`` in
``CocoMetric.results2json``); one whose class names are missing from the COCO annotation
file, or listed in another order, silently trains on fewer classes or names them wrongly
(mmdet numbers the labels in the file's category order, not in the order of
``metainfo['classes']``). tools/train.py and tools/test.py run :func:`check_classes` on the
config and :func:`check_coco_categories` on each COCO-style dataset they build, before the
first iteration; each raises :class:`ClassMismatchError` with one line naming both numbers
and the fix.
"""
from typing import Any, List, Optional, Sequence, Tuple

from .checks import DatasetError

__all__ = ['ClassMismatchError', 'check_classes', 'check_coco_categories', 'check_label_values',
           'dataset_classes', 'head_class_counts', 'read_coco_categories']

#: keys of a model config whose value is the number of classes a head predicts
COUNT_KEYS = ('num_classes', 'num_things_classes')
#: sub-trees that predict something else (the RPN's objectness: num_classes=1)
SKIP_KEYS = ('rpn_head', 'train_cfg', 'test_cfg', 'init_cfg', 'data_preprocessor')

FIX = 'tools/new_dataset_config.py RECIPE --data-root DIR --classes ... writes a config ' \
      'where both agree'


class ClassMismatchError(DatasetError):
    """The dataset's classes and the model's heads or the annotation file disagree."""


def _path(parts) -> str:
    return '.'.join(str(p) for p in parts)


def head_class_counts(model_cfg: dict) -> List[Tuple[str, int]]:
    """``[(key path, number of classes)]`` of every classifying head in ``model_cfg``: each
    ``num_classes`` / ``num_things_classes`` (+ ``num_stuff_classes`` beside it) outside the
    RPN, with paths such as ``model.roi_head.bbox_head.0.num_classes``."""
    found = []

    def walk(node, parts):
        if isinstance(node, dict):
            for key in COUNT_KEYS:
                if isinstance(node.get(key), int):
                    count = node[key]
                    if key == 'num_things_classes':
                        count += int(node.get('num_stuff_classes') or 0)
                    found.append((_path(parts + [key]), count))
                    break
            for key, value in node.items():
                if key not in SKIP_KEYS:
                    walk(value, parts + [key])
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, parts + [i])

    walk(model_cfg, ['model'])
    return found


def _class_weights(model_cfg: dict) -> List[Tuple[str, int, int]]:
    """``[(path, entries, num_classes)]`` of every ``loss_cls.class_weight`` list beside a
    class count (Mask2Former: one weight per class plus the no-object weight)."""
    found = []

    def walk(node, parts, count):
        if isinstance(node, dict):
            for key in COUNT_KEYS:
                if isinstance(node.get(key), int):
                    count = node[key] + (int(node.get('num_stuff_classes') or 0)
                                         if key == 'num_things_classes' else 0)
                    break
            weight = node.get('class_weight')
            if isinstance(weight, (list, tuple)) and len(weight) > 1 and count is not None:
                found.append((_path(parts + ['class_weight']), len(weight), count))
            for key, value in node.items():
                if key not in SKIP_KEYS:
                    walk(value, parts + [key], count)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, parts + [i], count)

    walk(model_cfg, ['model'], None)
    return found


def _leaf(dataset_cfg: dict) -> dict:
    while isinstance(dataset_cfg, dict) and isinstance(dataset_cfg.get('dataset'), dict):
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def dataset_classes(dataset_cfg: dict) -> Tuple[Optional[Sequence[str]], str]:
    """The class names of a dataset config (inside wrappers) and where they come from:
    ``metainfo.classes``, else the dataset class's ``METAINFO`` (e.g. mmdet's 80 COCO classes)
    looked up in the registry of the current default scope; ``(None, '')`` when unknown."""
    from mmengine.registry import DATASETS
    leaf = _leaf(dataset_cfg)
    if not isinstance(leaf, dict):
        return None, ''
    classes = (leaf.get('metainfo') or {}).get('classes')
    if classes:
        return tuple(classes), 'metainfo classes'
    kind = leaf.get('type')
    try:
        if isinstance(kind, str):
            with DATASETS.switch_scope_and_registry(leaf.get('_scope_')) as registry:
                kind = registry.get(kind)
        classes = getattr(kind, 'METAINFO', {}).get('classes')
    except Exception:  # an unregistered type is reported by the Runner
        return None, ''
    if classes:
        return tuple(classes), f'the classes of {kind.__name__}'
    return None, ''


def _named(classes: Sequence[str], limit: int = 6) -> str:
    shown = ', '.join(map(str, classes[:limit]))
    return shown + (f', ... ({len(classes) - limit} more)' if len(classes) > limit else '')


def check_classes(cfg, splits=('train', 'val', 'test')) -> None:
    """Raise :class:`ClassMismatchError` when a dataset of ``splits`` names another number of
    classes than a head of ``cfg.model`` predicts, or a ``class_weight`` list does not fit
    its head."""
    model = cfg.get('model')
    if not isinstance(model, dict):
        return
    heads = head_class_counts(model)
    for path, entries, count in _class_weights(model):
        if entries != count + 1:
            raise ClassMismatchError(
                f'{path} has {entries} entries but its head predicts {count} classes; it needs '
                f'{count + 1} (one per class, then the no-object weight), e.g. '
                f'[1.0] * {count} + [0.1].')
    if not heads:
        return
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
            continue
        classes, source = dataset_classes(loader['dataset'])
        if classes is None:
            continue
        wrong = [(path, n) for path, n in heads if n != len(classes)]
        if wrong:
            path, n = wrong[0]
            more = f' (and {len(wrong) - 1} more head(s))' if len(wrong) > 1 else ''
            raise ClassMismatchError(
                f'{split}_dataloader.dataset has {len(classes)} classes ({source}: '
                f'{_named(classes)}) but {path} is {n}{more}; set num_classes={len(classes)} '
                f'in every head ({", ".join(p for p, _ in heads)}) or change the classes '
                f'(metainfo) of the datasets; {FIX}.')


def read_coco_categories(ann_file: str) -> Optional[List[dict]]:
    """The ``categories`` list of a COCO annotation file, or None when it has none. The list
    is decoded from where the key stands (COCO files put it last), without parsing the whole
    file, falling back to a full parse."""
    import json
    import re
    with open(ann_file, 'rb') as f:
        data = f.read()
    decoder = json.JSONDecoder()
    for match in reversed(list(re.finditer(rb'"categories"\s*:\s*\[', data[-(1 << 20):]))
                          if len(data) > (1 << 20) else []):
        start = len(data) - (1 << 20) + match.end() - 1
        try:
            value = decoder.raw_decode(data[start:].decode('utf-8', errors='strict'))[0]
        except (ValueError, UnicodeDecodeError):
            break
        if isinstance(value, list):
            return value
    categories = json.loads(data).get('categories')
    return categories if isinstance(categories, list) else None


def check_coco_categories(dataset: Any) -> None:
    """Raise :class:`ClassMismatchError` when a built COCO-style dataset (``cat_ids`` and a
    local JSON ``ann_file``, e.g. mmdet's ``CocoDataset``) names classes that its annotation
    file lacks, or lists them in another order than the file's categories (mmdet numbers the
    labels in the file's order, so the names would be wrong)."""
    ann_file = getattr(dataset, 'ann_file', None)
    classes = dataset.metainfo.get('classes')
    if getattr(dataset, 'cat_ids', None) is None or not classes or \
            not isinstance(ann_file, str) or not ann_file.endswith('.json') or \
            '://' in ann_file:
        return
    cats = read_coco_categories(ann_file)
    if not cats:
        return
    names = [cat.get('name') for cat in cats if isinstance(cat, dict)]
    missing = [name for name in classes if name not in names]
    if missing:
        import difflib
        close = [difflib.get_close_matches(str(m), names, n=1, cutoff=0.6) for m in missing]
        hint = '; '.join(f'{m!r}: did you mean {c[0]!r}?' for m, c in zip(missing, close) if c)
        hint = f': {hint}' if hint else ''
        raise ClassMismatchError(
            f'{type(dataset).__name__}: {len(missing)} of the {len(classes)} classes are not '
            f'categories of {ann_file} ({", ".join(map(repr, missing))}){hint}; its '
            f'{len(names)} categories are {_named(names)}; use the names in the file for '
            f'metainfo classes.')
    wanted = set(classes)
    in_file_order = [name for name in names if name in wanted]
    if in_file_order != list(classes):
        raise ClassMismatchError(
            f'{type(dataset).__name__}: the classes are listed in another order than the '
            f'categories of {ann_file} (mmdet numbers the labels in the file order, so the '
            f'names would be wrong): list them as {" ".join(in_file_order)}.')


def check_label_values(dataset: Any, limit: int = 16) -> None:
    """Raise :class:`ClassMismatchError` when one of the first ``limit`` label maps of a built
    segmentation dataset (``seg_map_path`` in its data list) holds a label that is not a class
    after the dataset's ``reduce_zero_label`` / ``label_map`` (255 is ignored): such a label
    fails deep in the loss, or is silently scored as another class."""
    import numpy as np
    from PIL import Image
    classes = dataset.metainfo.get('classes') or ()
    if not classes or not hasattr(dataset, 'get_data_info'):
        return
    reduce_zero = bool(getattr(dataset, 'reduce_zero_label', False))
    label_map = getattr(dataset, 'label_map', None) or {}
    ignore = getattr(dataset, 'ignore_index', 255)
    for index in range(min(limit, len(dataset))):
        path = dataset.get_data_info(index).get('seg_map_path')
        if not isinstance(path, str) or '://' in path or not path:
            continue
        try:
            with Image.open(path) as image:
                values = np.unique(np.asarray(image))
        except OSError:
            continue  # a missing or unreadable map is the dataset checks' and loader's job
        raw = values
        if reduce_zero:
            values = np.where(values == 0, 255, values.astype(np.int64) - 1)
        if label_map:
            values = np.array([label_map.get(int(v), v) for v in values])
        bad = [int(r) for r, v in zip(raw, values) if v != ignore and v != 255 and
               not 0 <= v < len(classes)]
        if bad:
            zero = ' (reduce_zero_label: label 0 is ignored, label k is class k - 1)' \
                if reduce_zero else ''
            raise ClassMismatchError(
                f'{type(dataset).__name__}: {path} holds label {bad[0]}'
                f'{f" (and {len(bad) - 1} more values)" if len(bad) > 1 else ""}, but the '
                f'dataset has {len(classes)} classes{zero}; give every class (or map the '
                f'labels to 0..{len(classes) - 1 + reduce_zero} and 255 for ignored pixels).')
