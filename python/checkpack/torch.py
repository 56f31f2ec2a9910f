"""torch.distributed.checkpoint storage for Checkpack archives.

`ArchiveReader` loads a checkpoint straight out of an archive that
`checkpack pack` made from a torch.distributed.checkpoint directory. It is
torch's own FileSystemReader with its file system replaced by the archive's
entries, so torch's metadata, item formats and stream extensions (ZStandard)
all work unchanged, and every item read fetches and decodes only the frames
that hold it.
"""
import io
import os

from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemReader

from ._native import Archive, CheckpackError


class _EntryStream(io.RawIOBase):
    """A seekable, read-only file over one archive entry."""

    def __init__(self, archive, name):
        super().__init__()
        self._archive = archive
        self._name = name
        size = archive.size(name)
        if size is None:
            raise FileNotFoundError(f"{archive.path}: no entry {name!r}")
        self._size = size
        self._position = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._position

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        n = max(0, min(view.nbytes, self._size - self._position))
        if n:
            self._archive.read_into(self._name, self._position, view[:n])
            self._position += n
        return n


class _ArchiveFileSystem(FileSystemBase):
    """Paths are entry names of one archive; it can only be read."""

    def __init__(self, archive):
        self.archive = archive

    def create_stream(self, path, mode):
        if "r" not in mode or "+" in mode or "w" in mode:
            raise CheckpackError("an archive opened for reading cannot be written")
        return io.BufferedReader(_EntryStream(self.archive, os.fspath(path)), buffer_size=1 << 20)

    def concat_path(self, path, suffix):
        return suffix if not path else f"{os.fspath(path)}/{suffix}"

    def init_path(self, path):
        return ""

    def rename(self, path, new_path):
        raise CheckpackError("an archive opened for reading cannot be changed")

    def mkdir(self, path):
        raise CheckpackError("an archive opened for reading cannot be changed")

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return _is_archive(checkpoint_id)

    def exists(self, path):
        return self.archive.size(os.fspath(path)) is not None

    def rm_file(self, path):
        raise CheckpackError("an archive opened for reading cannot be changed")


def _is_archive(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89CKPK\r\n\x1a"
    except OSError:
        return False


class ArchiveReader(FileSystemReader):
    """Loads a torch.distributed.checkpoint checkpoint from a Checkpack archive."""

    def __init__(self, path, _extension_registry=None):
        super().__init__(path, _extension_registry=_extension_registry)
        self._open(path)

    def _open(self, path):
        self.archive = Archive(path)
        self.fs = _ArchiveFileSystem(self.archive)
        self.path = ""

    def reset(self, checkpoint_id=None):
        super().reset(None)
        if checkpoint_id:
            self._open(checkpoint_id)

    def _slice_file(self, file, sinfo):
        # One range read of exactly the item's bytes: only the frames that
        # hold them are decoded, and torch parses the item from memory.
        return io.BytesIO(self.archive.read(sinfo.relative_path, sinfo.offset, sinfo.length))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return _is_archive(checkpoint_id)
