"""Check the datasets the Runner built before the first iteration
(:func:`convnext_dense.datasets.checks.check_built_dataset`)."""
from mmengine.hooks import Hook

from ..registry import HOOKS


@HOOKS.register_module()
class DatasetCheckHook(Hook):
    """Stop with a clear error, before the first iteration, when a dataset the Runner built has
    no samples or lists images / segmentation maps that are not on disk (naming the dataset,
    how many are missing and the first one). Each split is checked once.

    ``custom_hooks=[dict(type='convnext_dense.DatasetCheckHook')]`` works in any mmengine
    config; tools/train.py and tools/test.py run the fuller
    :func:`convnext_dense.datasets.check_dataset_config` themselves.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._checked = set()

    def _check(self, runner, split: str) -> None:
        if split not in self._checked:
            from ..datasets.checks import check_built_dataset
            check_built_dataset(getattr(runner, f'{split}_dataloader').dataset)
            self._checked.add(split)

    def before_train(self, runner) -> None:
        self._check(runner, 'train')

    def before_val(self, runner) -> None:
        self._check(runner, 'val')

    def before_test(self, runner) -> None:
        self._check(runner, 'test')
