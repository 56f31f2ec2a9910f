"""torch.distributed.checkpoint storage for Checkpack archives.

`ArchiveWriter` saves a checkpoint straight into one archive: the coordinator
writes its own data into the archive, every other rank writes its items into
a staging part beside it, and the coordinator appends the parts (without
recompressing) and `.metadata`. One process may also save into
s3://bucket/key, as one multipart upload. `ArchiveReader` loads a checkpoint
straight out of an archive — one that ArchiveWriter wrote, or that
`checkpack pack` made from a torch.distributed.checkpoint directory — from a
path, an http(s):// URL or S3. Both are torch's own FileSystemWriter /
FileSystemReader with the file system replaced by archives, so torch's
metadata, item formats and stream extensions (ZStandard) all work unchanged;
every item starts its own frame(s), and every item read fetches and decodes
only the frames that hold it.
"""
from ._torch_reader import ArchiveReader
from ._torch_writer import ArchiveWriter

__all__ = ["ArchiveReader", "ArchiveWriter"]
