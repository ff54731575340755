"""onnxruntime, imported on demand: a session on the CPU and a run on NumPy arrays.

onnxruntime (and onnx, onnxscript for the export) are optional: ``pip install onnxruntime``
(versions verified with this project: requirements-test.txt).
"""
import os
from typing import Dict, List, Optional

import numpy as np

from ..errors import MissingFileError, MissingPackageError


def require(package: str, purpose: str):
    """Import ``package`` or raise ``ModuleNotFoundError`` naming the pip package to install."""
    import importlib
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as error:
        if error.name != package:
            raise
        raise MissingPackageError(
            f'{purpose} needs the Python package {package!r}, which is not installed; run '
            f'`pip install {package}` (the versions this project verified are pinned in '
            f'requirements-test.txt).', name=package) from None


def create_session(onnx_file: str, threads: Optional[int] = None):
    """An ``onnxruntime.InferenceSession`` of ``onnx_file`` on the CPU execution provider.
    ``threads`` (default: $OMP_NUM_THREADS if set, else onnxruntime's choice) sets the
    intra-op thread count, so that a comparison with PyTorch uses the same number of cores."""
    ort = require('onnxruntime', 'Running an ONNX file')
    if not os.path.isfile(onnx_file):
        raise MissingFileError(f'ONNX file {onnx_file} does not exist; export one with '
                               f'tools/deployment/export_onnx.py CONFIG CHECKPOINT --out FILE.')
    options = ort.SessionOptions()
    if threads is None and os.environ.get('OMP_NUM_THREADS', '').isdigit():
        threads = int(os.environ['OMP_NUM_THREADS'])
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_file, sess_options=options,
                                providers=['CPUExecutionProvider'])


def run_session(session, inputs: np.ndarray) -> List[np.ndarray]:
    """All outputs of ``session`` for its single input ``inputs`` (float32 (N, 3, H, W))."""
    feeds: Dict[str, np.ndarray] = {session.get_inputs()[0].name:
                                    np.ascontiguousarray(inputs, dtype=np.float32)}
    return session.run(None, feeds)
