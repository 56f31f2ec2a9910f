"""checkpack.torch.ArchiveWriter: saves a torch.distributed.checkpoint checkpoint
straight into one archive, from one process or many (or into s3://bucket/key
from one process)."""
import functools
import io
import math
import os
import signal
import threading

from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemWriter

from ._native import Archive, ArchiveBuilder, ArchiveNotFoundError, CheckpackError, remove_temporaries
from ._torch_reader import _is_url
from ._torch_records import _PartStream


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
