import Dispatch
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

/// A sink that takes several parts in one call (a file: one writev), so
/// that they need not be copied together first.
package protocol GatheringSink: ArchiveSink {
    /// Appends `parts`, in order.
    func write(gathering parts: [UnsafeRawBufferPointer]) throws
}

/// A file that appears whole or not at all — an archive (spec section 11.1),
/// or a checkpoint's data or metadata file: written to a temporary file
/// beside the destination, synced, and renamed into place on commit, then
/// its folder synced. The one implementation of that sequence.
public final class FileSink: GatheringSink {
    /// The destination path.
    public let path: String
    public var name: String { path }
    private let overwrite: Bool
    /// The temporary file, synced as it grows; open until committed or aborted.
    private var writing: Writeback?
    var file: SystemFile? { writing?.file }

    /// Refuses an existing destination unless `overwrite`, and a directory always.
    public init(path: String, overwrite: Bool) throws {
        self.path = path
        self.overwrite = overwrite
        writing = Writeback(try FileSink.temporaryFile(for: path, overwrite: overwrite))
    }

    /// Takes over `temporary`, a file `temporaryFile(for:overwrite:)` made
    /// beside `path` (perhaps in another process), to finish and commit it.
    package init(adopting temporary: String, path: String, overwrite: Bool) throws {
        self.path = path
        self.overwrite = overwrite
        let file = try SystemFile.openForWriting(temporary)
        Interruption.track(file.path)
        writing = Writeback(file)
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
        try write(gathering: [bytes])
    }

    package func write(gathering parts: [UnsafeRawBufferPointer]) throws {
        guard let writing else { throw CheckpackError(.invalidArgument, "archive is closed", path: path) }
        try writing.file.write(gathering: parts)
        writing.wrote(parts.reduce(0) { $0 + $1.count })
    }

    public func commit(header: [UInt8]) throws {
        guard let writing else { throw CheckpackError(.invalidArgument, "archive is closed", path: path) }
        let file = writing.file
        if !header.isEmpty { try header.withUnsafeBytes { try file.write($0, at: 0) } }
        try writing.sync()
        if overwrite {
            try FileSystem.rename(file.path, to: path)
        } else {
            try FileSystem.renameNoReplace(file.path, to: path)
        }
        Interruption.untrack(file.path)
        self.writing = nil
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
        writing = nil
    }
}

/// Makes a file durable as it grows: every `step` bytes, an fdatasync starts
/// on a thread of its own (one at a time), so the disk persists what was
/// written while later frames are compressed, and the fsync at the end waits
/// for the last few MiB only. Only starting the writes (sync_file_range) is
/// not enough: a virtual machine's disk takes them into its host's cache at
/// once and persists them at the flush, so all the waiting would come at the
/// end (a 266 MB pack to ext4 on a 2-core VM: 0.94 s with sync_file_range
/// every 8 MiB, 0.73 s with this).
final class Writeback: @unchecked Sendable {
    static let step: UInt64 = 16 << 20
    let file: SystemFile
    /// Bytes written since the last sync started (the writing thread's own).
    private var unsynced: UInt64 = 0
    /// Taken while a sync runs.
    private let idle = DispatchSemaphore(value: 1)
    /// The errno of a sync that failed: the file's final fsync would not report it again.
    private let failure = Locked<Int32?>(nil)

    init(_ file: SystemFile) { self.file = file }

    /// `count` more bytes were written.
    func wrote(_ count: Int) {
        unsynced += UInt64(count)
        // A sync still running when the next step fills takes in the new bytes on the next step.
        guard unsynced >= Writeback.step, idle.wait(timeout: .now()) == .success else { return }
        unsynced = 0
        let (file, idle, failure) = (self.file, self.idle, self.failure)
        runOnNewThread {
            if retrying({ fdatasync(file.descriptor) }) != 0 {
                let code = errno
                failure.withLock { if $0 == nil { $0 = code } }
            }
            idle.signal()
        }
    }

    /// Waits for a sync still running, then fsyncs the file; throws if any sync failed.
    func sync() throws {
        idle.wait()
        idle.signal()
        if let code = failure.withLock({ $0 }) { throw CheckpackError.system("fsync failed", path: file.path, errno: code) }
        try file.sync()
    }
}
