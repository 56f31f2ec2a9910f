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
    private let sync: Bool
    /// Open until committed or aborted.
    private(set) var file: SystemFile?

    /// Refuses an existing destination unless `overwrite`, and a directory always.
    /// Without `sync`, nothing is fsynced (for temporary archives only).
    public init(path: String, overwrite: Bool, sync: Bool = true) throws {
        if FileSystem.exists(path) {
            guard overwrite else { throw CheckpackError(.alreadyExists, "already exists", path: path) }
            // Known now, not after compressing everything: a directory is never replaced by an archive.
            if FileSystem.isDirectory(path) { throw CheckpackError(.io(EISDIR), "is a directory", path: path) }
        }
        self.path = path
        self.overwrite = overwrite
        self.sync = sync
        let file = try FileSystem.temporaryFile(beside: path, suffix: "ckpk-tmp")
        Interruption.track(file.path)
        _ = fchmod(file.descriptor, 0o666 & ~FileSystem.umaskBits)   // mkstemp makes it 0600
        self.file = file
    }

    deinit { abort() }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard let file else { throw CheckpackError(.invalidArgument, "archive is closed", path: path) }
        try file.write(bytes)
        written += UInt64(bytes.count)
        // Write back as we go, so the fsync at commit waits for the last few MiB,
        // not for everything: the disk works while later frames are compressed.
        if sync && written - writebackStart >= FileSink.writebackStep {
            _ = ckpk_start_writeback(file.descriptor, Int64(writebackStart), Int64(written - writebackStart))
            writebackStart = written
        }
    }

    private var written: UInt64 = 0
    private var writebackStart: UInt64 = 0
    static let writebackStep: UInt64 = 8 << 20

    public func commit(header: [UInt8]) throws {
        guard let file else { throw CheckpackError(.invalidArgument, "archive is closed", path: path) }
        if !header.isEmpty { try header.withUnsafeBytes { try file.write($0, at: 0) } }
        if sync { try file.sync() }
        if overwrite {
            try FileSystem.rename(file.path, to: path)
        } else {
            try FileSystem.renameNoReplace(file.path, to: path)
        }
        Interruption.untrack(file.path)
        self.file = nil
        if sync { try FileSystem.syncDirectory(FileSystem.parent(of: path)) }
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
