"""Clear errors for bad dataset input, raised before training starts, not deep inside it.

:func:`check_dataset_config` (run by tools/train.py and tools/test.py on the config's datasets,
also inside wrappers) and ``convnext_dense.DatasetCheckHook`` (any config) report a missing
``data_root`` / ``ann_file`` / image (``FileNotFoundError``), an empty, non-JSON or incomplete
annotation file, and a dataset with no samples left (:class:`DatasetError`), each naming the
file, key or dataset. Images are checked while loaded by
``convnext_dense.LoadImageFromFileChecked`` (:class:`CorruptImageError`). Nothing here
changes mmengine's, mmdet's or mmseg's classes.
Details: docs/datasets.md.
"""
import io
import json
import os.path as osp
from typing import List, Optional

from ..errors import InputError, MissingFileError

__all__ = ['CorruptImageError', 'DatasetError', 'build_checked_dataset', 'check_built_dataset',
           'check_dataset_config', 'full_init_checked', 'image_problem', 'read_image']


class DatasetError(InputError):
    """A dataset's annotation file or contents are unusable."""


class CorruptImageError(InputError):
    """An image file exists but cannot be decoded (corrupt or truncated)."""


def _is_local(path) -> bool:
    return isinstance(path, str) and bool(path) and '://' not in path


def _name(dataset) -> str:
    return type(dataset).__name__


# ----------------------------------------------------------------------------- datasets
def _check_paths_exist(dataset) -> None:
    root = getattr(dataset, 'data_root', None)
    if _is_local(root) and not osp.isdir(root):
        raise MissingFileError(
            f'{_name(dataset)}: dataset root {root!r} does not exist. Set data_root in the '
            f'config or pass --cfg-options data_root=PATH (the toy sets are written by '
            f'`python -m convnext_dense.datasets.toy {{coco,ade}} PATH`).')
    ann_file = getattr(dataset, 'ann_file', None)
    if _is_local(ann_file) and not osp.isfile(ann_file):
        raise MissingFileError(
            f'{_name(dataset)}: annotation file {ann_file!r} does not exist (data_root '
            f'{root!r}). Check ann_file and data_root in the config.')


def _explain_load_error(dataset, error: Exception) -> Optional[Exception]:
    ann_file = getattr(dataset, 'ann_file', None)
    if not _is_local(ann_file):
        return None
    if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
        if osp.getsize(ann_file) == 0:
            what = 'is empty (0 bytes)'
        elif isinstance(error, json.JSONDecodeError):
            what = f'is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})'
        else:
            what = f'is not UTF-8 text ({error})'
        return DatasetError(f'{_name(dataset)}: annotation file {ann_file} {what}. It may be '
                            f'truncated or the wrong file; regenerate or re-download it.')
    if isinstance(error, KeyError) and ann_file.endswith('.json'):
        return DatasetError(f'{_name(dataset)}: annotation file {ann_file} lacks the key '
                            f'{error.args[0]!r} (a COCO-style file needs images, annotations '
                            f'and categories). Is it the right file?')
    return None


def _check_data_list(dataset, data_list) -> None:
    prefix = getattr(dataset, 'data_prefix', None) or {}
    source = getattr(dataset, 'ann_file', None) or (
        f'the image folder {prefix.get("img_path") or prefix.get("img")}' if prefix else None)
    if not data_list:
        raise DatasetError(
            f'{_name(dataset)}: {source or "the dataset"} lists no samples (data_root '
            f'{getattr(dataset, "data_root", None)!r}). Check ann_file, data_root, data_prefix '
            f'and the image suffix in the config.')
    for key, what in (('img_path', 'image'), ('seg_map_path', 'segmentation map')):
        paths = [info[key] for info in data_list if _is_local(info.get(key))]
        missing = [p for p in paths if not osp.exists(p)]
        if key == 'seg_map_path' and getattr(dataset, 'test_mode', False) and \
                len(missing) == len(paths):
            continue  # testing without labels (format-only): there are no maps at all
        if missing:
            raise MissingFileError(
                f'{_name(dataset)}: {len(missing)} of the {len(paths)} {what}s of '
                f'{source} do not exist; the first: {missing[0]}. Check data_root and '
                f'data_prefix in the config, or regenerate the annotations.')


def full_init_checked(dataset):
    """``dataset.full_init()`` with the checks of this module, for this instance only (its
    ``load_data_list`` / ``filter_data`` are wrapped while it runs); returns ``dataset``."""
    if getattr(dataset, '_fully_initialized', False):
        check_built_dataset(dataset)
        return dataset
    _check_paths_exist(dataset)
    load, filter_data = dataset.load_data_list, dataset.filter_data

    def checked_load():
        try:
            data_list = load()
        except Exception as error:
            clear = _explain_load_error(dataset, error)
            if clear is None:
                raise
            raise clear from error
        _check_data_list(dataset, data_list)
        return data_list

    def checked_filter():
        data_list = filter_data()
        filter_cfg = getattr(dataset, 'filter_cfg', None)
        if not data_list and filter_cfg:  # before mmengine fails serialising nothing
            raise DatasetError(
                f'{_name(dataset)}: no sample of {getattr(dataset, "ann_file", "")} is left '
                f'after filter_cfg={filter_cfg} (e.g. every image lacks annotations). '
                f'Check the annotations, or relax filter_cfg.')
        return data_list

    dataset.load_data_list, dataset.filter_data = checked_load, checked_filter
    try:
        dataset.full_init()
    finally:
        for name in ('load_data_list', 'filter_data'):
            dataset.__dict__.pop(name, None)
    return dataset


def _is_base_dataset(cls) -> bool:
    from mmengine.dataset import BaseDataset
    return isinstance(cls, type) and issubclass(cls, BaseDataset)


def build_checked_dataset(cfg: dict):
    """Build one dataset config (a ``BaseDataset``; the registry of the current default scope)
    and initialise it with the checks (:func:`full_init_checked`)."""
    from mmengine.registry import DATASETS
    cfg = dict(cfg)
    cls = cfg['type']
    if isinstance(cls, str):  # looked up as DATASETS.build does
        with DATASETS.switch_scope_and_registry(cfg.get('_scope_')) as registry:
            cls = registry.get(cls)
    if not _is_base_dataset(cls):
        return DATASETS.build(cfg)
    return full_init_checked(DATASETS.build(dict(cfg, lazy_init=True)))


def _leaf_configs(cfg: dict) -> List[dict]:
    """The datasets inside wrappers (``dataset=`` of Repeat / ClassBalanced / MultiImageMix,
    ``datasets=`` of Concat), or ``cfg`` itself."""
    if isinstance(cfg.get('dataset'), dict):
        return _leaf_configs(cfg['dataset'])
    if isinstance(cfg.get('datasets'), (list, tuple)):
        return [leaf for sub in cfg['datasets'] for leaf in _leaf_configs(sub)]
    return [cfg]


def check_dataset_config(cfg: dict) -> list:
    """Build every dataset of a (possibly wrapped) dataset config with the checks and return
    them (the caller drops them after its own checks). What tools/train.py and tools/test.py
    run before the Runner builds the data loaders (it costs one more reading of the
    annotations: seconds for COCO)."""
    return [build_checked_dataset(leaf) for leaf in _leaf_configs(cfg)]


def check_built_dataset(dataset) -> None:
    """The checks that apply to a dataset already built (no samples; listed images or maps
    missing on disk), through dataset wrappers. Used by ``DatasetCheckHook``."""
    if hasattr(dataset, 'datasets'):  # ConcatDataset
        for sub in dataset.datasets:
            check_built_dataset(sub)
    elif hasattr(dataset, 'dataset'):  # RepeatDataset, ClassBalancedDataset, ...
        check_built_dataset(dataset.dataset)
    elif _is_base_dataset(type(dataset)):
        _check_data_list(dataset, [dataset.get_data_info(i) for i in range(len(dataset))])


# ----------------------------------------------------------------------------- images
def image_problem(data: bytes) -> Optional[str]:
    """Why ``data`` looks truncated (cheap byte checks), or None."""
    if not data:
        return 'the file is empty (0 bytes)'
    if data[:2] == b'\xff\xd8':  # JPEG: an end-of-image marker must follow the last scan
        scan = data.rfind(b'\xff\xda')
        if scan < 0:
            return 'JPEG without image data (no start-of-scan marker)'
        if data.rfind(b'\xff\xd9') < scan:
            return 'JPEG ends before its end-of-image marker (truncated file)'
    elif data[:8] == b'\x89PNG\r\n\x1a\n' and data.rfind(b'IEND') < 0:
        return 'PNG without its final IEND chunk (truncated file)'
    return None


def _pillow_confirms(data: bytes) -> bool:
    """Whether Pillow, which reports truncation, also fails on ``data``."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return True
    return False


def read_image(data: bytes, filename: str, **decode_kwargs):
    """``mmcv.imfrombytes`` that raises :class:`CorruptImageError` naming ``filename``."""
    import mmcv
    problem = image_problem(data)
    if problem is not None and data and not _pillow_confirms(data):
        problem = None  # e.g. a JPEG with extra data appended after its end (motion photos)
    image, error = None, None
    if problem is None:
        try:
            image = mmcv.imfrombytes(data, **decode_kwargs)
        except Exception as exc:  # the decoder's own complaint
            error = exc
        if image is None:
            problem = f'it cannot be decoded ({error or "the decoder returned nothing"})'
    if problem is not None:
        raise CorruptImageError(
            f'Image {filename} is corrupt: {problem}. Replace or remove it (and its '
            f'annotations); or, for training, skip such images with skip_bad_images=True: '
            f"dict(type='convnext_dense.LoadImageFromFileChecked', skip_bad_images=True) in "
            f'the train pipeline.') from error
    return image
