"""torch.distributed.checkpoint storage for Checkpack archives.

`ArchiveWriter` saves a checkpoint straight into one archive: every rank
writes its items into a staging part beside the destination, and the
coordinator joins the parts (without recompressing) and adds `.metadata`.
`ArchiveReader` loads a checkpoint straight out of an archive — one that
ArchiveWriter wrote, or that `checkpack pack` made from a
torch.distributed.checkpoint directory. Both are
torch's own FileSystemWriter / FileSystemReader with the file system
replaced by archives, so torch's metadata, item formats and stream extensions
(ZStandard) all work unchanged; every item starts its own frame(s), and every
item read fetches and decodes only the frames that hold it.
"""
import collections
import ctypes
import dataclasses
import functools
import io
import math
import os
import pickle
import re
import signal
import threading
import torch
import types
from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.planner import LoadItemType

from ._native import Archive, ArchiveBuilder, ArchiveNotFoundError, CheckpackError, remove_temporaries


class _ItemView(io.RawIOBase):
    """A seekable, read-only view of bytes `offset`..`offset+length` of an archive entry.

    Its first and last `window` bytes (the whole item, when it is at most
    `whole` bytes) are held in memory, filled by the caller through `ends()`
    (with other items' ends, in one batch), so that parsing a torch.save'd
    item's zip structure, found at both ends, reads nothing more. Other reads
    go to the archive."""

    def __init__(self, archive, name, offset, length, window=64 << 10, whole=4 << 20):
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

    direct_reads = 0   # items read straight into their destination (for tests)
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
                self.direct_reads += 1
            else:
                large.append((req, target, (info.relative_path, info.offset + data_offset, target.data_ptr(), nbytes)))
        # Swift decodes the large items' frames straight into their tensors.
        self.archive.read_many([r for _, _, r in large])
        for req, target, _ in large:
            planner.commit_tensor(req, target)
            self.direct_reads += 1
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


# The legacy storage class torch.save names in data.pkl, by torch dtype.
_STORAGE_DTYPES = {
    b"BFloat16Storage": "bfloat16", b"HalfStorage": "float16", b"FloatStorage": "float32",
    b"DoubleStorage": "float64", b"ComplexFloatStorage": "complex64", b"ComplexDoubleStorage": "complex128",
    b"ShortStorage": "int16", b"IntStorage": "int32", b"LongStorage": "int64",
    b"UInt16Storage": "uint16", b"UInt32Storage": "uint32", b"UInt64Storage": "uint64",
    b"BoolStorage": "bool", b"ByteStorage": "uint8", b"CharStorage": "int8",   # one byte: no planes
}
_STORAGE_GLOBAL = re.compile(rb"ctorch\n(\w+Storage)\n")   # pickle's GLOBAL opcode


def _plane_element(name):
    """How the library's byte planes see an element of torch dtype `name`:
    (bytes, is a float); a complex number is its two floats."""
    dtype = getattr(torch, name)
    size = dtype.itemsize // 2 if dtype.is_complex else dtype.itemsize
    return size, dtype.is_floating_point or dtype.is_complex
_STORAGE_RECORD = re.compile(rb"/data/\d+$")
# torch.save's zip records: a 30-byte local file header, the name, then an
# extra field (id "FB") that pads the data to a 64-byte boundary.
_LOCAL_HEADER_LENGTH = 30
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
_ALIGNMENT_EXTRA_ID = b"FB"


class _PartStream(io.RawIOBase):
    """One data file of a save, written into the archive or into a staging part.

    torch's writer asks `tell()` at the start and the end of every item it
    writes; each such position becomes an item boundary, so every item starts
    a new frame. Inside a torch.save item, the storage record (the tensor's
    raw elements, one write) becomes an item of its own, typed by the dtype
    that data.pkl names, so the archive codes it in byte planes. Anything
    that does not look like torch.save's zip records is written as it is."""

    def __init__(self, builder, name, finish):
        """Writes file `name` into `builder`, which `close()` finishes when `finish` is true."""
        super().__init__()
        self._builder, self._finish = builder, finish
        self._builder.begin_file(name)
        self._pending = bytearray()
        self._position = 0
        self._expect = None   # what the next write is: "name", "extra", or a record's data
        self._record = None   # "pickle" or "storage" for the record being written
        self._dtype = None    # from the current item's data.pkl

    def _watch(self, data):
        """Follows torch.save's writes: local header, name, extra field, data."""
        n = len(data)
        if self._expect is None and n == _LOCAL_HEADER_LENGTH and bytes(data[:4]) == _LOCAL_HEADER_SIGNATURE:
            self._expect = "name"
        elif self._expect == "name":
            name = bytes(data)
            self._record = "pickle" if name.endswith(b"/data.pkl") else "storage" if _STORAGE_RECORD.search(name) else None
            self._expect = "extra"
        elif self._expect == "extra" and bytes(data[:2]) == _ALIGNMENT_EXTRA_ID:
            self._expect = "data"
        else:
            self._expect = None

    def _typed(self, data):
        """The dtype when `data` is a storage record's elements, else None."""
        if self._expect != "data":
            return None
        record, self._expect = self._record, None
        if record == "pickle":
            found = _STORAGE_GLOBAL.search(bytes(data[:4096]))
            self._dtype = _STORAGE_DTYPES.get(found.group(1)) if found else None
        return self._dtype if record == "storage" else None

    def writable(self):
        return True

    def seekable(self):
        return False

    def tell(self):
        self._flush()
        self._builder.mark_item()
        self._expect = self._dtype = None
        return self._position

    # torch.save writes each zip record's header, name and padding apart: such
    # small writes are gathered and handed to the library together.
    _SMALL = 64 << 10

    def write(self, data):
        dtype = self._typed(data)
        n = memoryview(data).nbytes
        if dtype is not None:
            self._flush()
            self._builder.mark_item(*_plane_element(dtype))
            self._builder.write(data)
            self._builder.mark_item()
        elif n < self._SMALL:
            self._pending += data
            if len(self._pending) >= self._SMALL:
                self._flush()
        else:
            self._flush()
            self._builder.write(data)
        self._position += n
        if dtype is None and self._expect != "data":
            self._watch(data)
        return n

    def _flush(self):
        if self._pending:
            self._builder.write(self._pending)
            self._pending = bytearray()

    def close(self):
        if not self.closed and self._builder is not None:
            self._flush()
            builder, self._builder = self._builder, None
            builder.end_file()
            if self._finish:
                builder.finish()
        super().close()


class _SaveSignals:
    """SIGTERM, SIGHUP and SIGINT during a save remove what this process was
    building — staging parts not joined yet and the writers' temporary files —
    then take their usual course (SIGINT raises KeyboardInterrupt; the others
    end the process with that signal), as the CLI does. Installed on the first
    save from the main thread, only over the default handlers."""
    parts = set()
    _installed = False

    @classmethod
    def install(cls):
        if cls._installed or threading.current_thread() is not threading.main_thread():
            return
        cls._installed = True
        for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            previous = signal.getsignal(number)
            if previous in (signal.SIG_DFL, signal.default_int_handler):
                signal.signal(number, functools.partial(cls._handle, previous))

    @classmethod
    def _handle(cls, previous, number, frame):
        remove_temporaries()
        for part in list(cls.parts):
            try:
                os.unlink(part)
            except OSError:
                pass
        cls.parts.clear()
        if previous is signal.default_int_handler:
            previous(number, frame)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)


class _ArchiveWriteFileSystem(FileSystemBase):
    """The coordinator writes its first data file straight into the archive;
    every other data file becomes a staging part `.NAME.ckpk-part-FILE`
    beside it. Renaming `.metadata.tmp` into place (the coordinator's last
    step) appends the parts and the metadata and finishes the archive. A
    one-process save with one data file thus writes the archive once, with no
    part and no copy.

    An s3:// archive is one multipart upload that the process streams all its
    data files into, one after another (ArchiveWriter writes them with one
    thread), then the metadata; finishing completes the upload."""

    def __init__(self, archive_path, codec, level, frame_size):
        self.remote = _is_url(archive_path)
        self.archive_path = os.fspath(archive_path) if self.remote else os.path.abspath(os.fspath(archive_path))
        self.codec, self.level, self.frame_size = codec, level, frame_size
        self._metadata = {}
        # The data files this save wrote (set by ArchiveWriter.finish): only their parts are joined.
        self.saved_files = None
        self.is_coordinator = False
        # Bytes this save plans to write (set by ArchiveWriter): they size an upload's parts.
        self.planned_bytes = 0
        self._lock = threading.Lock()
        self._direct = None   # (names of the data files, builder) written straight into the archive

    def part_path(self, name):
        directory, base = os.path.split(self.archive_path)
        return os.path.join(directory, f".{base}.ckpk-part-{name}")

    def parts(self):
        """This save's parts: never one that a killed earlier save of the same archive left."""
        if self.saved_files is None:
            raise CheckpackError("the archive's parts are not known before the save finishes")
        direct = self._direct[0] if self._direct else ()
        return [self.part_path(name) for name in self.saved_files if name not in direct]

    def _builder(self, path, sync):
        return ArchiveBuilder(path, codec=self.codec, level=self.level, frame_size=self.frame_size, sync=sync,
                              size_hint=self.planned_bytes)

    def create_stream(self, path, mode):
        name = os.fspath(path)
        if "w" not in mode:
            raise CheckpackError("an archive being written cannot be read")
        if name.startswith(".metadata"):
            fs = self

            class _MetadataBuffer(io.BytesIO):
                def close(self):
                    fs._metadata[name] = self.getvalue()
                    super().close()
            return _MetadataBuffer()
        _SaveSignals.install()
        with self._lock:
            if self.is_coordinator and (self._direct is None or self.remote):
                if self._direct is None:
                    self._direct = ([], self._builder(self.archive_path, sync=True))
                self._direct[0].append(name)
                return _PartStream(self._direct[1], name, finish=False)
        _SaveSignals.parts.add(self.part_path(name))
        # A staging part is joined into the archive and removed: only the archive is fsynced.
        return _PartStream(self._builder(self.part_path(name), sync=False), name, finish=True)

    def cancel(self):
        """Drops the archive a failed save left unfinished."""
        with self._lock:
            direct, self._direct = self._direct, None
        if direct:
            direct[1].cancel()

    def concat_path(self, path, suffix):
        return suffix

    def init_path(self, path):
        return ""

    def mkdir(self, path):
        """The folder the archive goes into (FileSystemWriter creates its checkpoint folder)."""
        if not self.remote:
            os.makedirs(os.path.dirname(self.archive_path) or ".", exist_ok=True)

    def exists(self, path):
        """Asked about `.metadata` before a save: the checkpoint exists when the archive does."""
        if os.fspath(path) != ".metadata":
            return False
        if not self.remote:
            return os.path.exists(self.archive_path)
        try:
            Archive(self.archive_path).close()
            return True
        except ArchiveNotFoundError:
            return False

    def rm_file(self, path):
        pass

    def rename(self, path, new_path):
        """The coordinator's final step: its own data file, the other parts and the metadata → the archive."""
        metadata = self._metadata.pop(os.fspath(path))
        parts = self.parts()
        with self._lock:
            direct, self._direct = self._direct, None
        builder = direct[1] if direct else self._builder(self.archive_path, sync=True)
        try:
            for part in parts:
                # Written by this save a moment ago: copied without a second pass that checks every
                # frame (its trailer and index are checked when it is opened; every read checks frames).
                builder.append_archive(part, check_frames=False)
            builder.add_file(os.fspath(new_path), metadata)
            builder.finish()
        except BaseException:
            builder.cancel()
            raise
        for part in parts:
            os.unlink(part)
            _SaveSignals.parts.discard(part)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return os.fspath(checkpoint_id).endswith(".ckpk")


def _item_bytes(item):
    """About how many bytes a write item takes in a data file."""
    data = item.tensor_data
    if data is None:
        return 64 << 10
    return math.prod(data.chunk.sizes) * data.properties.dtype.itemsize + (4 << 10)


class ArchiveWriter(FileSystemWriter):
    """Saves a torch.distributed.checkpoint checkpoint into one archive, from one or many processes.

    A drop-in for FileSystemWriter: it takes the same arguments with the same
    meaning where they apply — `thread_count` files written (and compressed)
    at once per rank, `single_file_per_rank`, `per_thread_copy_ahead`,
    `cache_staged_state_dict`, and `overwrite` (False refuses an existing
    archive, as FileSystemWriter refuses an existing checkpoint). The archive
    is always fsynced before it is renamed into place, whatever `sync_files`
    says, since the rename is what makes it visible. A missing parent folder
    is created. `codec`, `level` and `frame_size` choose the compression.

    `path` may be s3://bucket/key (S3 settings from the AWS_* environment
    variables): one process then streams the checkpoint as one multipart
    upload, and nothing appears under the key before the save succeeds; a
    failure or a signal aborts the upload. Saving from several ranks into one
    object is not supported yet: save to a local path and `checkpack cp` it."""

    def __init__(self, path, single_file_per_rank=True, sync_files=True, thread_count=1,
                 per_thread_copy_ahead=10_000_000, cache_staged_state_dict=False, overwrite=True,
                 _extensions=None, serialization_format=None, *, codec="zstd", level=None, frame_size=0):
        extra = {} if serialization_format is None else {"serialization_format": serialization_format}
        super().__init__(path, single_file_per_rank=single_file_per_rank, sync_files=sync_files,
                         thread_count=thread_count, per_thread_copy_ahead=per_thread_copy_ahead,
                         cache_staged_state_dict=cache_staged_state_dict, overwrite=overwrite,
                         _extensions=_extensions, **extra)
        self._settings = (codec, level, frame_size)
        # The archive is synced as a whole when it is finished; torch's own fsync of
        # each stream would only warn that an archive's streams have no descriptor.
        self.sync_files = False
        self._open(path)

    def _open(self, path):
        self.archive_path = os.fspath(path)
        self.fs = _ArchiveWriteFileSystem(path, *self._settings)
        self.path = ""
        if self.fs.remote:
            self.thread_count = 1   # one upload, written front to back: one data file at a time

    def reset(self, checkpoint_id=None):
        super().reset(None)
        self.fs.cancel()   # an archive a failed earlier save left open
        if checkpoint_id:
            self._open(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator, *args, **kwargs):
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        self.fs.is_coordinator = is_coordinator

    def prepare_global_plan(self, plans):
        if self.fs.remote and len(plans) > 1:
            raise CheckpackError(f"{self.archive_path}: saving from {len(plans)} ranks into one S3 object is not "
                                 "supported yet; save to a local path and `checkpack cp` it to S3")
        return super().prepare_global_plan(plans)

    def write_data(self, plan, planner):
        # Tensor bytes plus room for torch.save's records around each item.
        self.fs.planned_bytes = sum(_item_bytes(item) for item in plan.items)
        try:
            return super().write_data(plan, planner)
        except BaseException:
            self.fs.cancel()   # the archive this rank was writing: its temporary file, or its upload
            raise

    def finish(self, metadata, results):
        # The results name every data file of this save, on every rank.
        self.fs.saved_files = sorted({wr.storage_data.relative_path for rank in results for wr in rank})
        super().finish(metadata, results)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return os.fspath(checkpoint_id).endswith(".ckpk")
