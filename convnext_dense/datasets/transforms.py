"""Data pipeline transforms."""
from typing import Optional

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmengine.logging import print_log

from ..errors import MissingFileError
from ..registry import TRANSFORMS
from .checks import CorruptImageError, read_image


@TRANSFORMS.register_module()
class LoadImageFromFileChecked(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` with errors that name the image, and optional skipping.

    A missing image raises ``FileNotFoundError`` naming it; one that cannot be decoded or is
    truncated raises :class:`~convnext_dense.datasets.CorruptImageError` naming it and the
    reason (mmcv's loader decodes a truncated JPEG without complaint, the missing part grey).

    Args:
        skip_bad_images (bool): on a missing, corrupt or truncated image, log a warning naming
            it and return None, so that mmengine's dataset draws another sample (training
            only: a test-mode dataset refuses None). Default False: raise the error.
        **kwargs: the arguments of ``LoadImageFromFile`` (``ignore_empty=True`` returns None
            for any unreadable image, silently, as mmcv's does).

    ``LoadImageFromFileChecked.skipped`` lists the images skipped so far in this process (each
    data worker is a process of its own).
    """

    skipped = []  # class-wide: the pipeline is rebuilt per dataset, the count is per process

    def __init__(self, skip_bad_images: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_bad_images = skip_bad_images

    def _load(self, filename: str) -> np.ndarray:
        try:
            if self.file_client_args is not None:
                data = fileio.FileClient.infer_client(self.file_client_args,
                                                      filename).get(filename)
            else:
                data = fileio.get(filename, backend_args=self.backend_args)
        except FileNotFoundError as error:
            raise MissingFileError(f'Image {filename} does not exist (it is listed by the '
                                   f'dataset). Check data_root / data_prefix.') from error
        return read_image(data, filename, flag=self.color_type, backend=self.imdecode_backend)

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['img_path']
        try:
            image = self._load(filename)
        except Exception as error:
            if self.ignore_empty:
                return None
            if not self.skip_bad_images or not isinstance(
                    error, (CorruptImageError, FileNotFoundError)):
                raise
            LoadImageFromFileChecked.skipped.append(filename)
            print_log(f'Skipped image {filename} ({len(LoadImageFromFileChecked.skipped)} '
                      f'skipped so far in this process): {error}', logger='current', level=30)
            return None
        if self.to_float32:
            image = image.astype(np.float32)
        results['img'] = image
        results['img_shape'] = image.shape[:2]
        results['ori_shape'] = image.shape[:2]
        return results

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f', skip_bad_images={self.skip_bad_images})'
