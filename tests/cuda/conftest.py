"""Tests marked ``cuda`` need a CUDA GPU: they are skipped where torch sees none (CI, the CPU
machines). ``tools/gpu_check.sh`` runs them all (``pytest tests/cuda -m cuda``)."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (torch.cuda.is_available() is False)')
    for item in items:
        if item.get_closest_marker('cuda') is not None:
            item.add_marker(skip)
