import CSystemShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where an `ArchiveWriter`'s bytes go: a local file renamed into place, or
/// an object uploaded in parts. Bytes arrive in order, once each; nothing is
/// visible at the destination before `commit` succeeds, and nothing is left
/// of it after `abort`.
public protocol ArchiveSink: AnyObject {
    /// The destination, for messages (a path or a URL).
    var name: String { get }
    /// Appends `bytes` to the archive.
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// Replaces the archive's first `header.count` bytes (the file header,
    /// whose feature bits are known only at the end), then makes the whole
    /// archive visible at the destination at once.
    func commit(header: [UInt8]) throws
    /// Discards everything written. Safe to call more than once, and after a failure.
    func abort()
}

/// A file that appears whole or not at all — an archive (spec section 11.1),
/// or a checkpoint's data or metadata file: written to a temporary file
/// beside the destination, synced, and renamed into place on commit, then
/// its folder synced. The one implementation of that sequence.
public final class FileSink: ArchiveSink {
    /// The destination path.
    public let path: String
    public var name: String { path }
    private let overwrite: Bool
    /// Open until committed or aborted.
    private(set) var file: SystemFile?

    /// Refuses an existing destination unless `overwrite`, and a directory always.
    public init(path: String, overwrite: Bool) throws {
        self.path = path
        self.overwrite = overwrite
        self.file = try FileSink.temporaryFile(for: path, overwrite: overwrite)
    }

    /// Takes over `temporary`, a file `temporaryFile(for:overwrite:)` made
    /// beside `path` (perhaps in another process), to finish and commit it.
    package init(adopting temporary: String, path: String, overwrite: Bool) throws {
        self.path = path
        self.overwrite = overwrite
        let file = try SystemFile.openForWriting(temporary)
        Interruption.track(file.path)
        self.file = file
    }

    /// Checks the destination, then creates the temporary file beside it
    /// (removed on a signal until committed or aborted).
    static func temporaryFile(for path: String, overwrite: Bool) throws -> SystemFile {
        if FileSystem.exists(path) {
            guard overwrite else { throw CheckpackError(.alreadyExists, "already exists", path: path) }
            // Known now, not after compressing everything: a directory is never replaced by an archive.
            if FileSystem.isDirectory(path) { throw CheckpackError(.io(EISDIR), "is a directory", path: path) }
        }
        let file = try FileSystem.temporaryFile(beside: path, suffix: "ckpk-tmp")
        Interruption.track(file.path)
        _ = fchmod(file.descriptor, 0o666 & ~FileSystem.umaskBits)   // mkstemp makes it 0600
        return file
    }

    deinit { abort() }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard let file else { throw CheckpackError(.invalidArgument, "archive is closed", path: path) }
        try file.write(bytes)
        writeback.wrote(bytes.count, to: file)
    }

    private var writeback = Writeback(start: 0)

    public func commit(header: [UInt8]) throws {
        guard let file else { throw CheckpackError(.invalidArgument, "archive is closed", path: path) }
        if !header.isEmpty { try header.withUnsafeBytes { try file.write($0, at: 0) } }
        try file.sync()
        if overwrite {
            try FileSystem.rename(file.path, to: path)
        } else {
            try FileSystem.renameNoReplace(file.path, to: path)
        }
        Interruption.untrack(file.path)
        self.file = nil
        try FileSystem.syncDirectory(FileSystem.parent(of: path))
    }

    /// Makes the file visible at the destination as written (no header to replace).
    public func commit() throws {
        try commit(header: [])
    }

    public func abort() {
        guard let file else { return }
        _ = unlink(file.path)
        Interruption.untrack(file.path)
        self.file = nil
    }
}

/// Writes a file back as it grows, so the fsync at the end waits for the
/// last few MiB, not for everything: the disk works while later frames are
/// compressed.
struct Writeback {
    private var start: UInt64
    private var end: UInt64
    static let step: UInt64 = 8 << 20

    /// Tracks bytes written from `start` on.
    init(start: UInt64) { (self.start, self.end) = (start, start) }

    /// `count` more bytes were written after the previous ones.
    mutating func wrote(_ count: Int, to file: SystemFile) {
        end += UInt64(count)
        if end - start >= Writeback.step {
            _ = ckpk_start_writeback(file.descriptor, Int64(clamping: start), Int64(clamping: end - start))
            start = end
        }
    }
}
