"""Data pipeline transforms."""
from typing import Optional

from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log

from ..registry import TRANSFORMS
from .checks import CorruptImageError


@TRANSFORMS.register_module()
class LoadImageFromFileChecked(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` that can skip unreadable images while training.

    Args:
        skip_bad_images (bool): on a missing, corrupt or truncated image, log a warning naming
            it and return None, so that mmengine's dataset draws another sample (training
            only: a test-mode dataset refuses None). Default False: raise an error naming it.
        **kwargs: the arguments of ``LoadImageFromFile``.

    ``LoadImageFromFileChecked.skipped`` lists the images skipped so far in this process (each
    data worker is a process of its own).
    """

    skipped = []  # class-wide: the pipeline is rebuilt per dataset, the count is per process

    def __init__(self, skip_bad_images: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_bad_images = skip_bad_images

    def transform(self, results: dict) -> Optional[dict]:
        try:
            return super().transform(results)
        except (CorruptImageError, FileNotFoundError) as error:
            if not self.skip_bad_images:
                raise
            LoadImageFromFileChecked.skipped.append(results.get('img_path'))
            print_log(f'Skipped image {results.get("img_path")} '
                      f'({len(LoadImageFromFileChecked.skipped)} skipped so far in this '
                      f'process): {error}', logger='current', level=30)
            return None

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f', skip_bad_images={self.skip_bad_images})'
