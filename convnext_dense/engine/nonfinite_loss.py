"""Stop training on a NaN or infinite loss before the step that produced it is saved."""
import math
from typing import Optional

from mmengine.hooks import Hook

from ..registry import HOOKS


@HOOKS.register_module()
class StopOnNonFiniteLossHook(Hook):
    """Raise ``FloatingPointError`` naming the iteration and the loss term as soon as a logged
    loss is NaN or infinite.

    It runs before the checkpoint and logger hooks, so the step that produced the bad loss is
    never written to disk: the last checkpoint stays the last good one, and ``--resume``
    continues from it.
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        bad = {}
        for name, value in (outputs or {}).items():
            if 'loss' not in name:
                continue
            value = float(value.detach().float().mean()) if hasattr(value, 'detach') else value
            if isinstance(value, float) and not math.isfinite(value):
                bad[name] = value
        if not bad:
            return
        terms = ', '.join(f'{name}={value}' for name, value in bad.items())
        last = runner.message_hub.get_info('last_ckpt')
        raise FloatingPointError(
            f'Training stopped at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): '
            f'non-finite loss {terms}. Nothing from this step was saved; the last good '
            f'checkpoint is {last or "none yet"}. Lower the learning rate or check the data, '
            f'then continue with --resume.')
