"""Clear errors for bad dataset input, raised when the dataset is built, not deep in training.

Applied once by ``import convnext_dense`` (:func:`apply`), for every mmengine ``BaseDataset``
(mmdet's ``CocoDataset``, mmseg's ``BaseSegDataset`` / ``ADE20KDataset``, ...):

- a ``data_root`` or ``ann_file`` that does not exist: ``FileNotFoundError`` naming it;
- an annotation file that is empty, not JSON, or lacks a required key: ``ValueError`` naming
  the file and the position / key;
- annotations that name images (or segmentation maps) that are not on disk:
  ``FileNotFoundError`` naming the annotation file, how many are missing and the first one;
- a dataset with no samples (nothing listed, or everything removed by ``filter_cfg``):
  ``ValueError`` naming the dataset and its ``filter_cfg``.

An image without annotations is not an error: it is kept or dropped as the config's
``filter_cfg`` (``filter_empty_gt``) says.

mmcv's ``LoadImageFromFile`` (used by the mmdet and mmseg pipelines) raises
:class:`CorruptImageError` naming the image when it cannot be decoded or is truncated (OpenCV
decodes a truncated JPEG without complaint, with the missing part grey). To skip such images
while training instead, with a warning and a count, use
``dict(type='convnext_dense.LoadImageFromFileChecked', skip_bad_images=True)`` in place of
``LoadImageFromFile`` in the train pipeline (mmengine's dataset then draws another sample; in
test mode it cannot, so bad images stay an error there).
"""
import functools
import io
import json
import os.path as osp
from typing import Optional

__all__ = ['CorruptImageError', 'DatasetError', 'apply', 'image_problem', 'read_image']

_MARK = '_convnext_dense_checked'


class DatasetError(ValueError):
    """A dataset's annotation file or contents are unusable."""


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded (corrupt or truncated)."""


def _is_local(path) -> bool:
    return isinstance(path, str) and bool(path) and '://' not in path


def _name(dataset) -> str:
    return type(dataset).__name__


# ----------------------------------------------------------------------------- datasets
def _check_paths_exist(dataset) -> None:
    root = getattr(dataset, 'data_root', None)
    if _is_local(root) and not osp.isdir(root):
        raise FileNotFoundError(
            f'{_name(dataset)}: dataset root {root!r} does not exist. Set data_root in the '
            f'config or pass --cfg-options data_root=PATH (the toy sets are written by '
            f'`python -m convnext_dense.datasets.toy {{coco,ade}} PATH`).')
    ann_file = getattr(dataset, 'ann_file', None)
    if _is_local(ann_file) and not osp.isfile(ann_file):
        raise FileNotFoundError(
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
            raise FileNotFoundError(
                f'{_name(dataset)}: {len(missing)} of the {len(paths)} {what}s of '
                f'{source} do not exist; the first: {missing[0]}. Check data_root and '
                f'data_prefix in the config, or regenerate the annotations.')


def _checked_full_init(full_init):
    if getattr(full_init, _MARK, False):
        return full_init

    @functools.wraps(full_init)
    def wrapper(self):
        if getattr(self, '_fully_initialized', False) or self.__dict__.get(_MARK):
            return full_init(self)  # already done, or an inner super().full_init()
        _check_paths_exist(self)
        load = self.load_data_list

        def checked_load():
            try:
                data_list = load()
            except Exception as error:
                clear = _explain_load_error(self, error)
                if clear is None:
                    raise
                raise clear from error
            _check_data_list(self, data_list)
            return data_list

        filter_data = self.filter_data

        def checked_filter():
            data_list = filter_data()
            filter_cfg = getattr(self, 'filter_cfg', None)
            if not data_list and filter_cfg:  # before mmengine fails serialising nothing
                raise DatasetError(
                    f'{_name(self)}: no sample of {getattr(self, "ann_file", "")} is left '
                    f'after filter_cfg={filter_cfg} (e.g. every image lacks annotations). '
                    f'Check the annotations, or relax filter_cfg.')
            return data_list

        self.__dict__[_MARK] = True
        self.load_data_list, self.filter_data = checked_load, checked_filter
        try:
            full_init(self)
        finally:
            for name in ('load_data_list', 'filter_data', _MARK):
                self.__dict__.pop(name, None)

    setattr(wrapper, _MARK, True)
    return wrapper


def _wrap_class(cls) -> None:
    if 'full_init' in cls.__dict__:
        cls.full_init = _checked_full_init(cls.__dict__['full_init'])


def _patch_datasets() -> None:
    from mmengine.dataset import BaseDataset

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in [BaseDataset, *subclasses(BaseDataset)]:  # classes defined already ...
        _wrap_class(cls)
    parent_hook = BaseDataset.__dict__.get('__init_subclass__')

    def __init_subclass__(cls, **kwargs):  # ... and the ones defined from now on
        if parent_hook is not None:
            parent_hook.__func__(cls, **kwargs)
        else:
            super(BaseDataset, cls).__init_subclass__(**kwargs)
        _wrap_class(cls)

    BaseDataset.__init_subclass__ = classmethod(__init_subclass__)


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
            f'annotations); or, for training, skip such images with dict(type='
            f"'convnext_dense.LoadImageFromFileChecked', skip_bad_images=True) in place of "
            f'LoadImageFromFile in the train pipeline.') from error
    return image


def _checked_load_image(self, results: dict) -> Optional[dict]:
    """mmcv ``LoadImageFromFile.transform`` with errors that name the image."""
    import mmengine.fileio as fileio
    import numpy as np
    filename = results['img_path']
    try:
        if self.file_client_args is not None:
            client = fileio.FileClient.infer_client(self.file_client_args, filename)
            data = client.get(filename)
        else:
            data = fileio.get(filename, backend_args=self.backend_args)
        image = read_image(data, filename, flag=self.color_type,
                           backend=self.imdecode_backend)
    except FileNotFoundError as error:
        if self.ignore_empty:
            return None
        raise FileNotFoundError(f'Image {filename} does not exist (it is listed by the '
                                f'dataset). Check data_root / data_prefix.') from error
    except Exception:
        if self.ignore_empty:
            return None
        raise
    if self.to_float32:
        image = image.astype(np.float32)
    results['img'] = image
    results['img_shape'] = image.shape[:2]
    results['ori_shape'] = image.shape[:2]
    return results


def _patch_image_loading() -> None:
    from mmcv.transforms import LoadImageFromFile
    if not getattr(LoadImageFromFile.transform, _MARK, False):
        setattr(_checked_load_image, _MARK, True)
        LoadImageFromFile.transform = _checked_load_image


@functools.lru_cache(maxsize=None)
def apply() -> None:
    """Install the checks (idempotent)."""
    _patch_datasets()
    _patch_image_loading()
