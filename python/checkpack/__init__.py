"""Checkpack archives from Python: the native reader, and torch adapters in checkpack.torch."""
from ._native import (Archive, ArchiveBuilder, ArchiveExistsError, ArchiveNotFoundError, ArchivePermissionError,
                      CheckpackError, CorruptArchiveError)

__all__ = ["Archive", "ArchiveBuilder", "ArchiveExistsError", "ArchiveNotFoundError", "ArchivePermissionError",
           "CheckpackError", "CorruptArchiveError"]
