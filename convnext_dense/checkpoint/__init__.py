"""Checkpoints: weights-only loading (:mod:`.io`), the layouts a ConvNeXt backbone is read
from (:mod:`.layouts`), the paper's trained dense models (:mod:`.official`), atomic saving
(:mod:`.atomic`) and whether a state dict fits a model (:mod:`.fit`).

The names below are imported on first use: :mod:`convnext_dense.compat` imports :mod:`.io`
before mmengine's fixes are applied, and must not pull in mmengine's runner with it.
"""
import importlib

_EXPORTS = {
    'io': ('DamagedCheckpointError', 'TRUST_ENV', 'UnsafeCheckpointError', 'download', 'fetch',
           'load_checkpoint', 'verify_sha256'),
    'layouts': ('LAYOUTS', 'convert_checkpoint', 'detect_layout', 'load_backbone_checkpoint',
                'sparse_to_dense_kernel'),
    'official': ('OFFICIAL_MODELS', 'adapt_checkpoint'),
    'atomic': ('AtomicCheckpointHook', 'AtomicLocalBackend', 'find_latest_checkpoint',
               'save_atomically', 'write_atomically'),
    'fit': ('CheckpointFitsModelHook', 'FitReport', 'check_checkpoint_fits',
            'extract_state_dict', 'fit_report', 'skip_mismatched_tensors'),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(f'.{_MODULE_OF[name]}', __name__), name)
