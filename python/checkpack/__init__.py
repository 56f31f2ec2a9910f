"""Checkpack archives from Python: the native reader, and torch adapters in checkpack.torch."""
from ._native import Archive, CheckpackError

__all__ = ["Archive", "CheckpackError"]
