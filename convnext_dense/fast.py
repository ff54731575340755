"""Kept so that ``from convnext_dense.fast import enable_fast_inference`` works: the fast path
lives in :mod:`convnext_dense.inference.fast`."""
from .inference.fast import enable_fast_inference  # noqa: F401
