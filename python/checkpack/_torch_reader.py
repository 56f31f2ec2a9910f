"""checkpack.torch.ArchiveReader: loads a torch.distributed.checkpoint checkpoint
straight out of an archive (a path, an http(s):// URL or s3://bucket/key)."""
import collections
import ctypes
import dataclasses
import io
import math
import os
import pickle
import re
import types

import torch
from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemReader
from torch.distributed.checkpoint.planner import LoadItemType

from ._native import Archive, ArchiveNotFoundError, CheckpackError
from ._torch_records import _STORAGE_DTYPES


class _ItemView(io.RawIOBase):
    """A seekable, read-only view of bytes `offset`..`offset+length` of an archive entry.

    Its first and last `window` bytes (the whole item, when it is at most
    `whole` bytes) are held in memory, filled by the caller through `ends()`
    (with other items' ends, in one batch), so that parsing a torch.save'd
    item's zip structure, found at both ends, reads nothing more. Other reads
    go to the archive. A torch.save'd tensor's zip records take under 5 KiB
    at either end (parsed 4 KiB at a time): a 16 KiB window holds them and
    decodes two or three of an item's 32 KiB frames, where 64 KiB decoded five."""

    def __init__(self, archive, name, offset, length, window=16 << 10, whole=4 << 20):
        super().__init__()
        self._archive, self._name, self._offset, self._length = archive, name, offset, length
        self._position = 0
        head = length if length <= whole else min(window, length)
        self._head = bytearray(head)
        self._tail_start = max(head, length - window)
        self._tail = bytearray(length - self._tail_start)
        self.held_bytes = len(self._head) + len(self._tail)

    def filled(self):
        """Reads the held bytes now (for a view used on its own)."""
        self._archive.read_many(self.ends())
        return self

    def ends(self):
        """The reads that fill the held bytes, as (name, offset, address, length) for `Archive.read_many`."""
        return [(self._name, self._offset + start, ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer)), len(buffer))
                for start, buffer in ((0, self._head), (self._tail_start, self._tail)) if buffer]

    def held(self, start, count):
        """The bytes `start`..`start+count` when already in memory (a memoryview), else None."""
        if start + count <= len(self._head):
            return memoryview(self._head)[start:start + count]
        if start >= self._tail_start and start + count <= self._length:
            return memoryview(self._tail)[start - self._tail_start:start - self._tail_start + count]
        return None

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._position

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        n = max(0, min(view.nbytes, self._length - self._position))
        if n:
            held = self.held(self._position, n)
            if held is not None:
                view[:n] = held
            else:
                self._archive.read_into(self._name, self._offset + self._position, view[:n])
            self._position += n
        return n


class _ArchiveFileSystem(FileSystemBase):
    """Paths are entry names of one archive (the reader's, opened on first use); it can only be read."""

    def __init__(self, reader):
        self._reader = reader

    @property
    def archive(self):
        return self._reader.archive

    def create_stream(self, path, mode):
        if "r" not in mode or "+" in mode or "w" in mode:
            raise CheckpackError("an archive opened for reading cannot be written")
        name = os.fspath(path)
        size = self.archive.size(name)
        if size is None:
            raise ArchiveNotFoundError(f"{self.archive.path}: no entry {name!r}")
        return io.BufferedReader(_ItemView(self.archive, name, 0, size).filled(), buffer_size=1 << 20)

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


def _is_url(path):
    return re.match(r"^[a-z][a-z0-9+.-]*://", os.fspath(path)) is not None


def _is_archive(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89CKPK\r\n\x1a"
    except OSError:
        return False


def _contiguous_strides(size):
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


class _TensorLayout(pickle.Unpickler):
    """Reads the layout of the one tensor a torch.save data.pkl holds —
    storage dtype and element count, offset, size, stride — without torch
    rebuilding it. Only the globals such a pickle names are resolved."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: (storage, offset, tuple(size), tuple(stride))
        if module == "torch" and name.encode() in _STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain tensor")

    def persistent_load(self, pid):
        return pid   # ("storage", storage class, key, location, element count)

    @classmethod
    def of(cls, data):
        value = cls(io.BytesIO(data)).load()
        if not (isinstance(value, tuple) and len(value) == 4 and isinstance(value[0], tuple) and len(value[0]) == 5):
            return None
        (kind, storage_class, key, _, numel), offset, size, stride = value
        if kind != "storage" or key != "0":
            return None
        return types.SimpleNamespace(dtype=getattr(torch, _STORAGE_DTYPES[storage_class.encode()]), numel=numel,
                                     offset=offset, size=size, stride=stride)


class ArchiveReader(FileSystemReader):
    """Loads a torch.distributed.checkpoint checkpoint from a Checkpack archive: a
    path, an http(s):// URL, or s3://bucket/key (S3 settings from the AWS_*
    environment variables).

    Nothing is opened here: each load opens the archive afresh (one read of its
    tail), so an archive saved again since the last load is seen whole, never
    mixed with the old one, and a missing or damaged archive raises inside
    dcp.load, as torch's own readers do (FileNotFoundError, PermissionError,
    checkpack.CorruptArchiveError)."""

    def __init__(self, path, _extension_registry=None):
        super().__init__(path, _extension_registry=_extension_registry)
        self.archive_path = os.fspath(path)
        self._archive = None
        self.fs = _ArchiveFileSystem(self)
        self.path = ""

    @property
    def archive(self):
        if self._archive is None:
            self._archive = Archive(self.archive_path)
        return self._archive

    def reset(self, checkpoint_id=None):
        super().reset(None)
        self.path = ""
        if checkpoint_id:
            self.archive_path = os.fspath(checkpoint_id)
        self._close()

    def _close(self):
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    # dcp.load calls reset() only when given a checkpoint_id; every load reads the
    # metadata first, and every rank sets the reader up: each load reopens there.
    _fresh = False

    def read_metadata(self, *args, **kwargs):
        self._close()
        self._fresh = True
        return super().read_metadata(*args, **kwargs)

    def set_up_storage_reader(self, metadata, is_coordinator, *args, **kwargs):
        if not self._fresh:
            self._close()
        self._fresh = False
        return super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)

    def read_data(self, plan, planner):
        """Tensor items that are one whole, contiguous torch.save'd chunk are
        read from the archive straight into the destination tensor's memory;
        everything else (slices, transforms, bytes) goes through torch's path.

        The direct reads are batched: first the two ends of every item (its zip
        structure; the whole item when small) in one call, then the data of the
        large ones in another. Each call plans its frames together, so items
        close in the archive share a read — one request from a remote archive —
        and reads run concurrently, outside the GIL."""
        rest, batch, batch_bytes = [], [], 0
        for req in plan.items:
            info = self.storage_data[req.storage_index]
            if req.type != LoadItemType.TENSOR or info.transform_descriptors:
                rest.append(req)
                continue
            view = _ItemView(self.archive, info.relative_path, info.offset, info.length)
            batch.append((req, info, view))
            batch_bytes += view.held_bytes
            if batch_bytes >= self.batch_bytes:
                rest += self._read_directly(batch, planner)
                batch, batch_bytes = [], 0
        rest += self._read_directly(batch, planner)
        return super().read_data(dataclasses.replace(plan, items=rest), planner)

    # Bytes of item ends held in memory at once: bounds a batch, whatever the load's size.
    batch_bytes = 64 << 20

    def _read_directly(self, batch, planner):
        """Reads what it can of `batch` straight into its destinations; returns the requests it could not."""
        self.archive.read_many([r for _, _, view in batch for r in view.ends()])
        rest, large = [], []
        for req, info, view in batch:
            found = self._destination(req, view, planner)
            if found is None:
                rest.append(req)
                continue
            target, data_offset = found
            # Contiguous on the CPU: its bytes are data_ptr() .. + nbytes.
            nbytes = target.numel() * target.element_size()
            held = view.held(data_offset, nbytes)
            if held is not None:
                if nbytes:
                    ctypes.memmove(target.data_ptr(), (ctypes.c_char * nbytes).from_buffer(held), nbytes)
                planner.commit_tensor(req, target)
            else:
                large.append((req, target, (info.relative_path, info.offset + data_offset, target.data_ptr(), nbytes)))
        # Swift decodes the large items' frames straight into their tensors.
        self.archive.read_many([r for _, _, r in large])
        for req, target, _ in large:
            planner.commit_tensor(req, target)
        return rest

    @staticmethod
    def _destination(req, item, planner):
        """The destination tensor and where the data record starts in the item, when
        the item is one contiguous tensor the destination takes whole; else None."""
        try:
            # Where the storage record starts inside the item, and the tensor's
            # layout from its pickle alone: no tensor bytes are read.
            records = torch._C.PyTorchFileReader(io.BufferedReader(item, 1 << 12))
            if records.get_record("byteorder") != b"little" or not records.has_record("data/0"):
                return None
            layout = _TensorLayout.of(records.get_record("data.pkl"))
            data_offset = records.get_record_offset("data/0")
        except Exception:
            return None
        if (layout is None or layout.offset != 0 or layout.stride != _contiguous_strides(layout.size)
                or layout.numel != math.prod(layout.size)
                or list(req.storage_offsets) != [0] * len(layout.size) or list(req.lengths) != list(layout.size)):
            return None
        target = planner.resolve_tensor(req).detach()
        if (target.device.type != "cpu" or target.dtype != layout.dtype or not target.is_contiguous()
                or tuple(target.shape) != layout.size):
            return None
        return target, data_offset

    def _slice_file(self, file, sinfo):
        # One range read of exactly the item's bytes: only the frames that
        # hold them are decoded, and torch parses the item from memory.
        return io.BytesIO(self.archive.read(sinfo.relative_path, sinfo.offset, sinfo.length))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return _is_archive(checkpoint_id)
