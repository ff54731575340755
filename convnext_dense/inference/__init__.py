"""Inference helpers: the fast path (:mod:`.fast`)."""
from .fast import enable_fast_inference  # noqa: F401
