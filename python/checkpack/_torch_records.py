"""torch.save's records as a data file carries them: which storage class
names which dtype, and a stream that writes a data file into an archive,
cutting items where torch.save's records start and typing each tensor's
elements for byte planes."""
import io
import re

import torch

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
# torch.save's zip records: a 30-byte local file header (its last four bytes
# the name's and the extra field's lengths), the name, then an extra field
# that pads the data to a 64-byte boundary; each written apart.
_LOCAL_HEADER_LENGTH = 30
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"


class _PartStream(io.RawIOBase):
    """One data file of a save, written into this rank's segment of the archive.

    torch's writer asks `tell()` at the start and the end of every item it
    writes; each such position becomes an item boundary, so every item starts
    a new frame. Inside a torch.save item, the storage record (the tensor's
    raw elements, one write) becomes an item of its own, typed by the dtype
    that data.pkl names, so the archive codes it in byte planes. Anything
    that does not look like torch.save's zip records is written as it is.

    torch.save calls `write` about 37 times per item, mostly for a few bytes,
    so a write costs two comparisons unless it starts a record's name or data:
    a record's local header says where both begin."""

    def __init__(self, builder, name):
        """Writes file `name` into `builder`."""
        super().__init__()
        self._builder = builder
        self._builder.begin_file(name)
        self._pending = bytearray()
        self._position = 0
        self._marked = -1     # the position of the last item boundary
        self._name_at = -1    # where the current record's name starts (from its local header)
        self._name_length = 0
        self._data_at = -1    # where its data starts
        self._record = None   # "pickle" or "storage" for the current record
        self._dtype = None    # from the current item's data.pkl

    def writable(self):
        return True

    def seekable(self):
        return False

    def tell(self):
        if self._marked != self._position:   # a boundary already marked here is not marked again
            self._flush()
            self._builder.mark_item()
            self._marked = self._position
        self._dtype = None
        return self._position

    # torch.save writes each zip record's header, name and padding apart: such
    # small writes are gathered and handed to the library together.
    _SMALL = 64 << 10

    def write(self, data):
        n = data.nbytes if type(data) is memoryview else len(data)
        position = self._position
        self._position = position + n
        if position == self._data_at and self._record is not None:
            dtype = self._record_data(data)
            if dtype is not None:
                self._flush()
                self._builder.mark_item(*_plane_element(dtype))
                self._builder.write(data)
                self._builder.mark_item()
                self._marked = self._position
                return n
        elif n == _LOCAL_HEADER_LENGTH and data[:4] == _LOCAL_HEADER_SIGNATURE:
            header = bytes(data)
            self._name_length = int.from_bytes(header[26:28], "little")
            self._name_at = position + n
            self._data_at = self._name_at + self._name_length + int.from_bytes(header[28:30], "little")
            self._record = None
        elif position == self._name_at:
            name = bytes(data[:self._name_length])
            self._record = "pickle" if name.endswith(b"/data.pkl") else "storage" if _STORAGE_RECORD.search(name) else None
        if n < self._SMALL:
            self._pending += data
            if len(self._pending) >= self._SMALL:
                self._flush()
        else:
            self._flush()
            self._builder.write(data)
        return n

    def _record_data(self, data):
        """`data` is the current record's: its dtype when it is a storage
        record's elements; data.pkl's names the dtype of those that follow."""
        record, self._record = self._record, None
        if record == "pickle":
            found = _STORAGE_GLOBAL.search(bytes(data[:4096]))
            self._dtype = _STORAGE_DTYPES.get(found.group(1)) if found else None
            return None
        return self._dtype

    def _flush(self):
        if self._pending:
            self._builder.write(self._pending)
            self._pending = bytearray()

    def close(self):
        if not self.closed and self._builder is not None:
            self._flush()
            builder, self._builder = self._builder, None
            builder.end_file()
        super().close()
