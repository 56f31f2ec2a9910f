"""checkpack.torch.ArchiveWriter: saves a torch.distributed.checkpoint checkpoint
straight into one archive (a local file or s3://bucket/key), from one process or many."""
import contextlib
import dataclasses
import functools
import io
import math
import os
import signal
import threading

import torch.serialization
from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemWriter, _StoragePrefix
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from ._native import Archive, ArchiveBuilder, ArchiveNotFoundError, CheckpackError, SharedUpload, remove_temporaries
from ._torch_reader import _is_url
from ._torch_records import _PartStream


class _SaveSignals:
    """SIGTERM, SIGHUP and SIGINT during a save remove what this process was
    building (the archive's temporary file; an upload is aborted), then take
    their usual course (SIGINT raises KeyboardInterrupt; the others end the
    process with that signal), as the CLI does. Installed on the first save
    from the main thread, only over the default handlers."""
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
        if previous is signal.default_int_handler:
            previous(number, frame)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)


_zip_crc = threading.local()


@contextlib.contextmanager
def _without_zip_crc():
    """torch.save computes a CRC32 of every record of its zip, which cost
    about 5% of a save's CPU; in an archive every frame carries a CRC32C of
    its bytes already, and torch.load never checks the zip's (as torch says
    of `set_crc32_options(False)`). So the thread saving into an archive
    skips it, while it does. torch's switch is process-wide, so it is asked
    through a wrapper that answers differently in this thread alone:
    torch.save anywhere else, even meanwhile, is untouched."""
    asked = getattr(torch.serialization, "get_crc32_options", None)
    if asked is not None and not getattr(asked, "_checkpack", False):
        @functools.wraps(asked)
        def get_crc32_options():
            return False if getattr(_zip_crc, "skipped", False) else asked()
        get_crc32_options._checkpack = True
        torch.serialization.get_crc32_options = get_crc32_options
    _zip_crc.skipped = True
    try:
        yield
    finally:
        _zip_crc.skipped = False


class _ArchiveWriteFileSystem(FileSystemBase):
    """Every rank writes straight into the one archive (`SharedUpload`, spec/CHECKPOINT.md):
    the coordinator starts it in `prepare_global_plan` — an S3 multipart
    upload, or a temporary file beside a local archive — and gives each rank
    its own range of part numbers (of the upload, or of the file). Each rank
    streams its data files, one after another, as a *segment* into its range
    and returns a record; renaming `.metadata.tmp` into place (the
    coordinator's last step) closes the gaps between the segments, adds the
    metadata, and completes the archive. No byte is staged or copied."""

    def __init__(self, archive_path, codec, level, frame_size):
        self.remote = _is_url(archive_path)
        self.archive_path = os.fspath(archive_path) if self.remote else os.path.abspath(os.fspath(archive_path))
        self.codec, self.level, self.frame_size = codec, level, frame_size
        self._metadata = {}
        self.is_coordinator = False
        # This rank's share of the archive (a _SegmentPlan, set by ArchiveWriter.write_data),
        # and on the coordinator every rank's segment record (set by ArchiveWriter.finish).
        self.segment = None
        self.segment_records = None
        self._lock = threading.Lock()
        self._builder = None   # this rank's segment, open while its data files are written

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
            if self._builder is None:
                self._builder = self._open_segment()
            return _PartStream(self._builder, name)

    def _open_segment(self):
        plan = self.segment
        if plan is None:
            raise CheckpackError(f"{self.archive_path}: no part numbers were planned for this rank")
        return ArchiveBuilder.segment(self.archive_path, plan.upload_id, plan.first_part, plan.last_part, plan.part_size,
                                      holds_first=self.is_coordinator, codec=self.codec, level=self.level,
                                      frame_size=self.frame_size)

    def finish_segment(self):
        """Ends this rank's segment; returns its record for the coordinator."""
        with self._lock:
            builder, self._builder = self._builder, None
        if builder is None:   # no data file (torch always makes one; be safe)
            builder = self._open_segment()
        return builder.finish_segment()

    def cancel(self):
        """Drops the archive a failed save left unfinished, for every rank."""
        with self._lock:
            builder, self._builder = self._builder, None
        if builder:
            builder.cancel()
        if self.segment is not None:
            SharedUpload.abort(self.archive_path, self.segment.upload_id)
            self.segment = None

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
        """The coordinator's final step: every rank's segment and the metadata → the archive."""
        metadata = self._metadata.pop(os.fspath(path))
        plan, self.segment = self.segment, None
        SharedUpload.complete(self.archive_path, plan.upload_id, self.segment_records, os.fspath(new_path), metadata,
                              codec=self.codec, level=self.level)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return os.fspath(checkpoint_id).endswith(".ckpk")


# The write result that carries a rank's segment record (never in the metadata).
_SEGMENT_RECORD = "__checkpack_segment__"


@dataclasses.dataclass
class _SegmentPlan(_StoragePrefix):
    """A rank's share of the archive: the upload (or temporary file), its part numbers and their size."""
    upload_id: str = ""
    first_part: int = 0
    last_part: int = 0
    part_size: int = 0


def _item_bytes(item):
    """About how many bytes a write item takes in a data file (the library adds room for the rest)."""
    data = item.tensor_data
    if data is None:
        return 64 << 10
    return math.prod(data.chunk.sizes) * data.properties.dtype.itemsize + (4 << 10)


class ArchiveWriter(FileSystemWriter):
    """Saves a torch.distributed.checkpoint checkpoint into one archive, from one or many processes.

    A drop-in for FileSystemWriter: it takes the same arguments with the same
    meaning where they apply — `single_file_per_rank`, `per_thread_copy_ahead`,
    `cache_staged_state_dict`, and `overwrite` (False refuses an existing
    archive, as FileSystemWriter refuses an existing checkpoint). Each rank
    writes its data files one after another into its share of the archive,
    compressing with every core, so `thread_count` is accepted and has no
    more to do. The archive is always fsynced before it is renamed into
    place, whatever `sync_files` says, since the rename is what makes it
    visible. A missing parent folder is created. `codec`, `level` and
    `frame_size` choose the compression.

    Every rank writes straight into the one archive: a local archive is a
    temporary file beside it in which each rank has its own region, renamed
    into place by the coordinator; `path` may also be s3://bucket/key (S3
    settings from the AWS_* environment variables), one multipart upload in
    which each rank has its own range of part numbers. Nothing appears at
    `path` before the save succeeds, and a failure on any rank (or a signal)
    removes the temporary file or aborts the upload. `part_size` sets the
    upload's part size (default: 16 MiB, more when the checkpoint needs it
    to fit S3's 10,000 parts)."""

    def __init__(self, path, single_file_per_rank=True, sync_files=True, thread_count=1,
                 per_thread_copy_ahead=10_000_000, cache_staged_state_dict=False, overwrite=True,
                 _extensions=None, serialization_format=None, *, codec="zstd", level=None, frame_size=0, part_size=None):
        extra = {} if serialization_format is None else {"serialization_format": serialization_format}
        super().__init__(path, single_file_per_rank=single_file_per_rank, sync_files=sync_files,
                         thread_count=thread_count, per_thread_copy_ahead=per_thread_copy_ahead,
                         cache_staged_state_dict=cache_staged_state_dict, overwrite=overwrite,
                         _extensions=_extensions, **extra)
        self._settings = (codec, level, frame_size)
        self.part_size = part_size
        # The archive is synced as a whole when it is finished; torch's own fsync of
        # each stream would only warn that an archive's streams have no descriptor.
        self.sync_files = False
        self._open(path)

    def _open(self, path):
        self.archive_path = os.fspath(path)
        self.fs = _ArchiveWriteFileSystem(path, *self._settings)
        self.path = ""
        self.thread_count = 1   # a rank's share is written front to back: one data file at a time

    def reset(self, checkpoint_id=None):
        super().reset(None)
        self.fs.cancel()   # an archive a failed earlier save left open
        if checkpoint_id:
            self._open(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator, *args, **kwargs):
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        self.fs.is_coordinator = is_coordinator

    def prepare_global_plan(self, plans):
        plans = super().prepare_global_plan(plans)
        # One archive for every rank: each gets a range of part numbers for its planned bytes.
        coordinator = self.rank if self.rank is not None else 0
        planned = [sum(_item_bytes(item) for item in plan.items) for plan in plans]
        part_size, ranges = SharedUpload.plan(planned, coordinator, self.part_size)
        _SaveSignals.install()   # from here on, a signal removes the archive begun below
        upload_id = SharedUpload.create(self.archive_path)
        return [dataclasses.replace(plan, storage_data=_SegmentPlan(plan.storage_data.prefix, upload_id, first, last, part_size))
                for plan, (first, last) in zip(plans, ranges)]

    def write_data(self, plan, planner):
        if isinstance(plan.storage_data, _SegmentPlan):
            self.fs.segment = plan.storage_data
        try:
            with _without_zip_crc():
                written = super().write_data(plan, planner)
            # This rank's segment record travels to the coordinator with its write results.
            record = WriteResult(index=MetadataIndex(_SEGMENT_RECORD), size_in_bytes=0, storage_data=self.fs.finish_segment())
            if not self.fs.is_coordinator:
                self.fs.segment = None   # the coordinator owns the archive now
            future = Future()
            future.set_result(written.wait() + [record])
            return future
        except BaseException:
            self.fs.cancel()   # the shared archive: its temporary file, or its upload
            raise

    def finish(self, metadata, results):
        # The segment records, coordinator's first, then the ranks in order (as their part numbers go).
        records = [[wr.storage_data for wr in rank if wr.index.fqn == _SEGMENT_RECORD] for rank in results]
        coordinator = self.rank if self.rank is not None else 0
        order = [coordinator] + [r for r in range(len(results)) if r != coordinator]
        self.fs.segment_records = [record for r in order for record in records[r]]
        results = [[wr for wr in rank if wr.index.fqn != _SEGMENT_RECORD] for rank in results]
        try:
            super().finish(metadata, results)
        except BaseException:
            self.fs.cancel()
            raise

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return os.fspath(checkpoint_id).endswith(".ckpk")
