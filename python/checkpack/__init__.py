"""Checkpack archives from Python: the native reader, and torch adapters in checkpack.torch."""
from ._native import Archive, ArchiveBuilder, CheckpackError

__all__ = ["Archive", "ArchiveBuilder", "CheckpackError"]
