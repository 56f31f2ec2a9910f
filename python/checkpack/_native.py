"""ctypes binding to libCheckpackC.so, the C ABI of the Swift library."""
import ctypes
import errno
import os

_ERROR_CAPACITY = 1024


class CheckpackError(Exception):
    """Every error Checkpack raises: a damaged archive, a missing entry, a failed read.
    The more specific classes below are also the built-in exceptions Python code
    expects (FileNotFoundError, PermissionError, FileExistsError)."""


class CorruptArchiveError(CheckpackError):
    """The archive's bytes break the format or fail a checksum. `entry`, `frame` and
    `offset` (archive offset) say where, when known (else None)."""

    def __init__(self, message, entry=None, frame=None, offset=None):
        super().__init__(message)
        self.entry, self.frame, self.offset = entry, frame, offset


class ArchiveNotFoundError(CheckpackError, FileNotFoundError):
    """No such archive (file or object), or no such entry in it."""


class ArchivePermissionError(CheckpackError, PermissionError):
    """The archive (or the folder or bucket) may not be read or written."""


class ArchiveExistsError(CheckpackError, FileExistsError):
    """The destination exists and replacing it was not asked for."""


def _error(text):
    """The exception for a message from the C ABI (fields separated by U+001F, see CheckpackC.swift)."""
    fields = text.split("\x1f")
    if len(fields) != 6:
        return CheckpackError(text)
    kind, number, entry, frame, offset, message = fields
    code = int(number) if number.lstrip("-").isdigit() else None
    if kind == "data":
        return CorruptArchiveError(message, entry or None, int(frame) if frame else None, int(offset) if offset else None)
    if kind == "notFound" or (kind == "io" and code == errno.ENOENT):
        error = ArchiveNotFoundError(message)
        error.errno = errno.ENOENT
    elif kind == "io" and code in (errno.EACCES, errno.EPERM):
        error = ArchivePermissionError(message)
        error.errno = code
    elif kind == "exists":
        error = ArchiveExistsError(message)
        error.errno = errno.EEXIST
    else:
        error = CheckpackError(message)
    return error


def remove_temporaries():
    """Removes the temporary files of archives this process is still writing (and aborts
    its uploads): for a signal handler, right before the process exits."""
    _lib.ckpk_remove_temporaries()


def _find_library():
    candidates = [os.environ.get("CHECKPACK_LIBRARY"),
                  os.path.join(os.path.dirname(__file__), "libCheckpackC.so"),
                  os.path.join(os.path.dirname(__file__), "..", "..", ".build", "release", "libCheckpackC.so")]
    for path in candidates:
        if path and os.path.exists(path):
            return os.path.abspath(path)
    raise CheckpackError("libCheckpackC.so not found: install with `pip install ./python` from a clone, "
                         "or set CHECKPACK_LIBRARY")


_lib = ctypes.CDLL(_find_library())
_lib.ckpk_reader_open.restype = ctypes.c_void_p
_lib.ckpk_reader_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
_lib.ckpk_reader_close.argtypes = [ctypes.c_void_p]
_lib.ckpk_reader_entry_size.restype = ctypes.c_int64
_lib.ckpk_reader_entry_size.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.ckpk_reader_read.restype = ctypes.c_int32
_lib.ckpk_reader_read.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64,
                                  ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
_lib.ckpk_reader_read_many.restype = ctypes.c_int32
_lib.ckpk_reader_read_many.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.POINTER(ctypes.c_char_p),
                                       ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
                                       ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
_lib.ckpk_remove_temporaries.restype = None
_lib.ckpk_remove_temporaries.argtypes = []
_lib.ckpk_reader_frames_decoded.restype = ctypes.c_uint64
_lib.ckpk_reader_frames_decoded.argtypes = [ctypes.c_void_p]


class Archive:
    """An open archive: entry sizes and byte-range reads that decode only the frames they touch."""

    def __init__(self, path):
        self.path = os.fspath(path)
        message = ctypes.create_string_buffer(_ERROR_CAPACITY)
        self._handle = _lib.ckpk_reader_open(os.fsencode(self.path), message, _ERROR_CAPACITY)
        if not self._handle:
            raise _error(message.value.decode("utf-8", "replace"))

    def close(self):
        if self._handle:
            _lib.ckpk_reader_close(self._handle)
            self._handle = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def size(self, name):
        """The size of file entry `name`, or None when there is none."""
        n = _lib.ckpk_reader_entry_size(self._handle, name.encode())
        return None if n < 0 else n

    def read_into(self, name, offset, buffer):
        """Fills `buffer` (a writable buffer: bytearray, memoryview, numpy or tensor storage) from `offset`."""
        view = memoryview(buffer).cast("B")
        if view.nbytes == 0:
            return
        address = ctypes.addressof((ctypes.c_char * view.nbytes).from_buffer(view))
        message = ctypes.create_string_buffer(_ERROR_CAPACITY)
        if _lib.ckpk_reader_read(self._handle, name.encode(), offset, view.nbytes, address, message, _ERROR_CAPACITY) != 0:
            raise _error(message.value.decode("utf-8", "replace"))

    def read_to_address(self, name, offset, address, length):
        """Reads `length` bytes into memory at `address` (a tensor's data_ptr(), say)."""
        if length == 0:
            return
        message = ctypes.create_string_buffer(_ERROR_CAPACITY)
        if _lib.ckpk_reader_read(self._handle, name.encode(), offset, length, address, message, _ERROR_CAPACITY) != 0:
            raise _error(message.value.decode("utf-8", "replace"))

    def read_many(self, ranges):
        """Reads many ranges at once: each (name, offset, address, length) fills `length`
        bytes at `address`. Their frames are planned together: ranges close in the
        archive share a read (one request, remotely), and reads run concurrently."""
        ranges = [r for r in ranges if r[3] > 0]
        if not ranges:
            return
        n = len(ranges)
        names = (ctypes.c_char_p * n)(*[r[0].encode() for r in ranges])
        offsets = (ctypes.c_uint64 * n)(*[r[1] for r in ranges])
        lengths = (ctypes.c_uint64 * n)(*[r[3] for r in ranges])
        addresses = (ctypes.c_void_p * n)(*[r[2] for r in ranges])
        message = ctypes.create_string_buffer(_ERROR_CAPACITY)
        if _lib.ckpk_reader_read_many(self._handle, n, names, offsets, lengths, addresses, message, _ERROR_CAPACITY) != 0:
            raise _error(message.value.decode("utf-8", "replace"))

    def read(self, name, offset=0, length=None):
        size = self.size(name)
        if size is None:
            raise ArchiveNotFoundError(f"{self.path}: no entry {name!r}")
        if length is None:
            length = size - offset
        buffer = bytearray(length)
        self.read_into(name, offset, buffer)
        return bytes(buffer)

    @property
    def frames_decoded(self):
        return _lib.ckpk_reader_frames_decoded(self._handle)

_lib.ckpk_writer_open.restype = ctypes.c_void_p
_lib.ckpk_writer_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_int32, ctypes.c_uint64,
                                  ctypes.c_char_p, ctypes.c_size_t]
for _name, _args in [("begin_file", [ctypes.c_char_p]), ("write", [ctypes.c_void_p, ctypes.c_uint64]),
                     ("mark_item", []), ("mark_typed_item", [ctypes.c_int32, ctypes.c_int32]), ("end_file", []), ("add_file", [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint64]),
                     ("finish", [])]:
    _function = getattr(_lib, "ckpk_writer_" + _name)
    _function.restype = ctypes.c_int32
    _function.argtypes = [ctypes.c_void_p] + _args + [ctypes.c_char_p, ctypes.c_size_t]
_lib.ckpk_writer_cancel.argtypes = [ctypes.c_void_p]
_lib.ckpk_free.argtypes = [ctypes.c_void_p]
_lib.ckpk_upload_create.restype = ctypes.c_void_p
_lib.ckpk_upload_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
_lib.ckpk_upload_abort.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_lib.ckpk_upload_plan.restype = ctypes.c_int32
_lib.ckpk_upload_plan.argtypes = [ctypes.c_ssize_t, ctypes.POINTER(ctypes.c_uint64), ctypes.c_ssize_t, ctypes.c_int64,
                                  ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64),
                                  ctypes.c_char_p, ctypes.c_size_t]
_lib.ckpk_writer_open_segment.restype = ctypes.c_void_p
_lib.ckpk_writer_open_segment.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                                          ctypes.c_int32, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_int32,
                                          ctypes.c_char_p, ctypes.c_size_t]
_lib.ckpk_writer_finish_segment.restype = ctypes.c_int32
_lib.ckpk_writer_finish_segment.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint64),
                                            ctypes.c_char_p, ctypes.c_size_t]
_lib.ckpk_upload_complete.restype = ctypes.c_int32
_lib.ckpk_upload_complete.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ssize_t, ctypes.POINTER(ctypes.c_void_p),
                                      ctypes.POINTER(ctypes.c_uint64), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint64,
                                      ctypes.c_char_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]


class SharedUpload:
    """One archive that several processes save into (spec/CHECKPOINT.md): one
    S3 multipart upload, or one local temporary file renamed into place. The
    coordinator `create`s it, each rank writes a segment
    (`ArchiveBuilder.segment`) into its own range of part numbers (of the
    upload, or of the file) and hands the record `finish_segment` returns to
    the coordinator, which `complete`s the archive with them. Any rank may
    `abort` it."""

    @staticmethod
    def create(url):
        """Creates the upload, or the temporary file; returns its id (the file's path)."""
        message = ctypes.create_string_buffer(_ERROR_CAPACITY)
        pointer = _lib.ckpk_upload_create(os.fsencode(url), message, _ERROR_CAPACITY)
        if not pointer:
            raise _error(message.value.decode("utf-8", "replace"))
        try:
            return os.fsdecode(ctypes.string_at(pointer))
        finally:
            _lib.ckpk_free(pointer)

    @staticmethod
    def plan(planned_bytes, coordinator, part_size=None):
        """The part size and each rank's (first, last) part numbers, for ranks that plan to
        write `planned_bytes[rank]` bytes each (the library's rule)."""
        n = len(planned_bytes)
        first, last, size = (ctypes.c_int32 * n)(), (ctypes.c_int32 * n)(), ctypes.c_int64()
        message = ctypes.create_string_buffer(_ERROR_CAPACITY)
        if _lib.ckpk_upload_plan(n, (ctypes.c_uint64 * n)(*planned_bytes), coordinator, part_size or 0, first, last,
                                 ctypes.byref(size), message, _ERROR_CAPACITY) != 0:
            raise _error(message.value.decode("utf-8", "replace"))
        return size.value, list(zip(first, last))

    @staticmethod
    def abort(url, upload_id):
        _lib.ckpk_upload_abort(os.fsencode(url), os.fsencode(upload_id))

    @staticmethod
    def complete(url, upload_id, records, name, data, codec="zstd", level=None):
        """Joins the segment records (rank order, the coordinator's first) and file `name`
        holding `data` into the archive, and completes it; aborts it on failure."""
        n = len(records)
        buffers = [ctypes.create_string_buffer(bytes(r), len(r)) for r in records]
        pointers = (ctypes.c_void_p * n)(*[ctypes.addressof(b) for b in buffers])
        lengths = (ctypes.c_uint64 * n)(*[len(r) for r in records])
        message = ctypes.create_string_buffer(_ERROR_CAPACITY)
        with _Bytes(data) as (address, length):
            if _lib.ckpk_upload_complete(os.fsencode(url), os.fsencode(upload_id), n, pointers, lengths, name.encode(), address, length,
                                         codec.encode(), -1000 if level is None else level, message, _ERROR_CAPACITY) != 0:
                raise _error(message.value.decode("utf-8", "replace"))


class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer: the address of any object's bytes, read-only ones included."""
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PYBUF_SIMPLE = 0   # the bytes as one contiguous block (a buffer that is not one is an error)


class _Bytes:
    """The address and length of a contiguous buffer's bytes, held for a `with` block.
    torch.save hands its writes over as read-only memoryviews of tensor storage:
    their bytes go to the library where they are, never copied into Python objects."""

    def __init__(self, data):
        self._view = _PyBuffer()
        _get_buffer(data, ctypes.byref(self._view), _PYBUF_SIMPLE)

    def __enter__(self):
        return self._view.buf, self._view.len

    def __exit__(self, *exc):
        _release_buffer(ctypes.byref(self._view))


class ArchiveBuilder:
    """Writes an archive front to back, to a path or to s3://bucket/key; it appears
    there only when `finish()` succeeds."""

    def __init__(self, path, codec="zstd", level=None, frame_size=0, threads=0, size_hint=0):
        """`size_hint` is about how many bytes will be written: it sizes an S3 upload's parts."""
        self.path = os.fspath(path)
        message = ctypes.create_string_buffer(_ERROR_CAPACITY)
        self._handle = _lib.ckpk_writer_open(os.fsencode(self.path), codec.encode(), -1000 if level is None else level,
                                             frame_size, threads, size_hint, message, _ERROR_CAPACITY)
        if not self._handle:
            raise _error(message.value.decode("utf-8", "replace"))
        self._message = message   # reused by every call: a builder is used by one thread at a time

    @classmethod
    def segment(cls, url, upload_id, first_part, last_part, part_size, holds_first, codec="zstd", level=None,
                frame_size=0, threads=0):
        """A builder for this rank's segment of a `SharedUpload`: parts `first_part`...`last_part`
        of `part_size` bytes; `holds_first` for the coordinator. End it with `finish_segment()`."""
        builder = cls.__new__(cls)
        builder.path = os.fspath(url)
        message = ctypes.create_string_buffer(_ERROR_CAPACITY)
        builder._handle = _lib.ckpk_writer_open_segment(os.fsencode(builder.path), os.fsencode(upload_id), first_part, last_part, part_size,
                                                        1 if holds_first else 0, codec.encode(), -1000 if level is None else level,
                                                        frame_size, threads, message, _ERROR_CAPACITY)
        if not builder._handle:
            raise _error(message.value.decode("utf-8", "replace"))
        builder._message = message
        return builder

    def finish_segment(self):
        """Ends a segment: sends the parts it can; returns the record for `SharedUpload.complete`."""
        if not self._handle:
            raise CheckpackError(f"{self.path}: the segment is already finished or cancelled")
        handle, self._handle = self._handle, None
        record, length = ctypes.c_void_p(), ctypes.c_uint64()
        if _lib.ckpk_writer_finish_segment(handle, ctypes.byref(record), ctypes.byref(length), self._message, _ERROR_CAPACITY) != 0:
            raise _error(self._message.value.decode("utf-8", "replace"))
        try:
            return ctypes.string_at(record, length.value)
        finally:
            _lib.ckpk_free(record)

    def _call(self, name, *args):
        if not self._handle:
            raise CheckpackError(f"{self.path}: the archive is already finished or cancelled")
        if getattr(_lib, "ckpk_writer_" + name)(self._handle, *args, self._message, _ERROR_CAPACITY) != 0:
            if name != "finish":
                self.cancel()
            self._handle = None
            raise _error(self._message.value.decode("utf-8", "replace"))

    def begin_file(self, name):
        self._call("begin_file", name.encode())

    def write(self, data):
        """Appends the bytes of `data` (any contiguous buffer) to the open file; returns their count."""
        with _Bytes(data) as (address, length):
            if length:
                self._call("write", address, length)
        return length

    def mark_item(self, element_size=0, is_float=False):
        """The next byte starts a new item (and frame). With `element_size` (2, 4
        or 8 bytes; IEEE-style floats when `is_float`), its elements go into byte planes."""
        if element_size:
            self._call("mark_typed_item", element_size, 1 if is_float else 0)
        else:
            self._call("mark_item")

    def end_file(self):
        self._call("end_file")

    def add_file(self, name, data):
        with _Bytes(data) as (address, length):
            self._call("add_file", name.encode(), address, length)

    def finish(self):
        self._call("finish")
        self._handle = None

    def cancel(self):
        if self._handle:
            _lib.ckpk_writer_cancel(self._handle)
            self._handle = None

    def __del__(self):
        self.cancel()
