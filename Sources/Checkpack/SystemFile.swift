import CSystemShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An open file descriptor with the few operations Checkpack needs, each
/// retrying on EINTR and reporting failures as `CheckpackError` naming the path.
package final class SystemFile: @unchecked Sendable {
    public let descriptor: Int32
    public let path: String
    private let owned: Bool

    init(descriptor: Int32, path: String, owned: Bool = true) {
        self.descriptor = descriptor
        self.path = path
        self.owned = owned
    }

    /// Takes ownership of an open descriptor (a pipe, a socket): it is closed
    /// when the value is released.
    public convenience init(adopting descriptor: Int32, path: String) {
        self.init(descriptor: descriptor, path: path, owned: true)
    }

    deinit { if owned { _ = Glibc.close(descriptor) } }

    /// A directory opened for fsync.
    static func openDirectory(_ path: String) throws -> SystemFile {
        let fd = retrying { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else { throw CheckpackError.system("cannot open directory", path: path) }
        return SystemFile(descriptor: fd, path: path)
    }

    /// Opens a file to pack: without blocking (a FIFO swapped in after the
    /// directory walk must not hang the run), and only a regular file (not a
    /// FIFO, a device such as /dev/zero, or a socket).
    /// Opens a regular file for reading without blocking on a FIFO; when
    /// `identity` is given, the file must still be that one (the one a walk listed).
    static func openRegularFile(_ path: String, identity: FileIdentity? = nil) throws -> SystemFile {
        let fd = retrying { open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC) }
        guard fd >= 0 else { throw CheckpackError.system("cannot open", path: path) }
        let file = SystemFile(descriptor: fd, path: path)
        let status = try file.status()
        guard (status.st_mode & S_IFMT) == S_IFREG else {
            throw CheckpackError(.io(EINVAL), "is not a regular file (it changed after it was listed?)", path: path)
        }
        if let identity, identity != FileIdentity(status) {
            throw CheckpackError(.io(EIO), "was replaced by another file after it was listed", path: path)
        }
        return file
    }

    public static func openForReading(_ path: String) throws -> SystemFile {
        let fd = retrying { open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw CheckpackError.system("cannot open", path: path) }
        let file = SystemFile(descriptor: fd, path: path)
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw CheckpackError.system("cannot stat", path: path) }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            throw CheckpackError(.io(EISDIR), "is a directory, not a file", path: path)
        }
        return file
    }

    /// Standard input, not closed when released.
    static var standardInput: SystemFile { SystemFile(descriptor: 0, path: "-", owned: false) }

    public var size: UInt64 {
        get throws { UInt64(try status().st_size) }
    }

    /// Permission bits (at most 0o7777).
    var mode: UInt32 {
        get throws { UInt32(try status().st_mode) & Format.maxMode }
    }

    private func status() throws -> stat {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw CheckpackError.system("cannot stat", path: path) }
        return info
    }

    /// Reads exactly `buffer.count` bytes at `offset`, or throws `truncated`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = retrying {
                pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n < 0 { throw CheckpackError.system("read failed", path: path) }
            if n == 0 {
                throw CheckpackError(.truncated, "file ends before \(offset + UInt64(buffer.count)) bytes", path: path)
            }
            done += n
        }
    }

    public func read(count: Int, at offset: UInt64) throws -> [UInt8] {
        if count == 0 { return [] }
        return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try read(into: UnsafeMutableRawBufferPointer(buffer), at: offset)
            initialized = count
        }
    }

    /// Reads sequentially until `buffer` is full or the input ends; returns the count read.
    public func readSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = retrying { Glibc.read(descriptor, buffer.baseAddress! + done, buffer.count - done) }
            if n < 0 { throw CheckpackError.system("read failed", path: path) }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try write(gathering: [bytes])
    }

    /// Writes all of `bytes` at `offset`, leaving the file position alone.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try write(gathering: [bytes], at: offset)
    }

    /// Writes all of `parts`, in order, with one writev where it can.
    public func write(gathering parts: [UnsafeRawBufferPointer]) throws {
        try writeGathered(parts) { vectors, count in Glibc.writev(descriptor, vectors, count) }
    }

    /// Writes all of `parts`, in order, at `offset`, with one pwritev where
    /// it can, leaving the file position alone.
    public func write(gathering parts: [UnsafeRawBufferPointer], at offset: UInt64) throws {
        var done: off_t = 0
        try writeGathered(parts) { vectors, count in
            let n = pwritev(descriptor, vectors, count, off_t(offset) + done)
            if n > 0 { done += off_t(n) }
            return n
        }
    }

    /// Calls `call` on the parts' vectors (at most 1024, POSIX's least IOV_MAX,
    /// at a time) until every byte is written, taking partial writes in stride.
    private func writeGathered(_ parts: [UnsafeRawBufferPointer], _ call: (UnsafePointer<iovec>, Int32) -> Int) throws {
        var vectors: [iovec] = []
        vectors.reserveCapacity(parts.count)
        for part in parts where !part.isEmpty {
            vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: part.baseAddress), iov_len: part.count))
        }
        var next = 0
        while next < vectors.count {
            let count = Int32(min(vectors.count - next, 1024))
            let n = retrying { vectors.withUnsafeBufferPointer { call($0.baseAddress! + next, count) } }
            if n < 0 { throw CheckpackError.system("write failed", path: path) }
            if n == 0 { throw CheckpackError(.io(EIO), "write wrote nothing", path: path) }
            var left = n
            while left > 0 {
                if left >= vectors[next].iov_len {
                    left -= vectors[next].iov_len
                    next += 1
                } else {
                    vectors[next].iov_base += left
                    vectors[next].iov_len -= left
                    left = 0
                }
            }
        }
    }

    /// Opens an existing file for writing in place (no create, no truncate):
    /// a temporary archive that another process made.
    static func openForWriting(_ path: String) throws -> SystemFile {
        let fd = retrying { open(path, O_RDWR | O_CLOEXEC) }
        guard fd >= 0 else { throw CheckpackError.system("cannot open for writing", path: path) }
        return SystemFile(descriptor: fd, path: path)
    }

    /// Cuts or extends the file to `length` bytes.
    func truncate(to length: UInt64) throws {
        guard length <= UInt64(off_t.max), retrying({ ftruncate(descriptor, off_t(length)) }) == 0 else {
            throw CheckpackError.system("cannot set the length to \(length)", path: path)
        }
    }

    /// The filesystem's block size for this file (what a collapse aligns to).
    var blockSize: UInt64 {
        get throws { UInt64(clamping: try status().st_blksize) }
    }

    /// Removes `length` bytes at `offset`, moving the rest of the file down
    /// without copying it. False where the filesystem cannot (then nothing changed).
    func collapse(_ length: UInt64, at offset: UInt64) -> Bool {
        guard offset <= UInt64(Int64.max), length <= UInt64(Int64.max) else { return false }
        return retrying { ckpk_collapse_range(descriptor, Int64(offset), Int64(length)) } == 0
    }

    /// Asks the kernel to start reading `range` into the page cache, without
    /// waiting for it (posix_fadvise WILLNEED). A hint: a failure changes nothing.
    func adviseWillRead(_ range: Range<UInt64>) {
        guard range.upperBound <= UInt64(Int64.max) else { return }
        _ = posix_fadvise(descriptor, off_t(range.lowerBound), off_t(range.upperBound - range.lowerBound), POSIX_FADV_WILLNEED)
    }

    /// Flushes the file to stable storage. A failure is final: after a failed
    /// fsync the kernel may have dropped the dirty pages, so retrying proves nothing.
    public func sync() throws {
        guard retrying({ fsync(descriptor) }) == 0 else { throw CheckpackError.system("fsync failed", path: path) }
    }
}

func retrying<T: BinaryInteger>(_ call: () -> T) -> T {
    while true {
        let result = call()
        if result < 0 && errno == EINTR { continue }
        return result
    }
}

/// Files and directories that an interrupted run (killed pack, unpack,
/// salvage or archive save) leaves beside its destination: recognisable by
/// name, `.NAME.ckpk-tmp-*`, `.NAME.ckpk-unpack-*`, `.NAME.ckpk-old-*` and `.NAME.ckpk-part-*`,
/// and the leftovers of those (a staging part is itself written through a
/// temporary file: `..NAME.ckpk-part-0.ckpk-tmp-*`).
package enum Leftovers {
    static let suffixes = ["ckpk-tmp-", "ckpk-unpack-", "ckpk-old-", "ckpk-part-"]

    /// The leftovers of earlier runs that wrote `destination`.
    public static func find(beside destination: String) -> [String] {
        let directory = FileSystem.parent(of: destination)
        let base = FileSystem.baseName(of: destination)
        let names = (try? FileSystem.listDirectory(directory)) ?? []
        return names.filter { isLeftover($0[...], of: base, depth: 2) }.map { directory + "/" + $0 }
    }

    private static func isLeftover(_ name: Substring, of base: String, depth: Int) -> Bool {
        let prefix = "." + base + "."
        if name.hasPrefix(prefix), suffixes.contains(where: { name.dropFirst(prefix.count).hasPrefix($0) }) {
            return true
        }
        // A leftover of a leftover: ".<leftover name>.ckpk-…".
        return depth > 1 && name.hasPrefix(".") && isLeftover(name.dropFirst(), of: base, depth: depth - 1)
    }
}

/// File-system operations on paths.
package enum FileSystem {
    /// "dir/name" → "dir"; "name" → ".".
    static func parent(of path: String) -> String {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        return slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
    }

    static func baseName(of path: String) -> String {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        guard let slash = trimmed.lastIndex(of: "/") else { return trimmed }
        return String(trimmed[trimmed.index(after: slash)...])
    }

    static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// Creates a new file beside `path` (same directory, so a rename is atomic)
    /// named `.BASE.SUFFIX-XXXXXX`, open for writing.
    static func temporaryFile(beside path: String, suffix: String) throws -> SystemFile {
        var template = Array("\(parent(of: path))/.\(baseName(of: path)).\(suffix)-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        let name = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard fd >= 0 else { throw CheckpackError.system("cannot create a temporary file", path: name) }
        return SystemFile(descriptor: fd, path: name)
    }

    /// Creates a new directory beside `path`, named `.BASE.SUFFIX-XXXXXX`.
    static func temporaryDirectory(beside path: String, suffix: String) throws -> String {
        var template = Array("\(parent(of: path))/.\(baseName(of: path)).\(suffix)-XXXXXX".utf8CString)
        let result = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let name = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard result != nil else { throw CheckpackError.system("cannot create a temporary directory", path: name) }
        return name
    }

    /// The process's file-creation mask (read by setting and restoring it).
    static var umaskBits: mode_t {
        let mask = umask(0o022)
        umask(mask)
        return mask
    }

    static func rename(_ from: String, to: String) throws {
        guard Glibc.rename(from, to) == 0 else { throw CheckpackError.system("cannot rename to \(to)", path: from) }
    }

    /// Moves `from` to `to` only if nothing is at `to`, atomically:
    /// renameat2(RENAME_NOREPLACE), or where the kernel or filesystem lacks
    /// it, link then unlink (the link fails atomically with EEXIST).
    static func renameNoReplace(_ from: String, to: String) throws {
        if ckpk_rename(from, to, CKPK_RENAME_NOREPLACE) == 0 { return }
        if errno == EEXIST { throw CheckpackError(.alreadyExists, "already exists", path: to) }
        guard errno == EINVAL || errno == ENOSYS else { throw CheckpackError.system("cannot rename to \(to)", path: from) }
        guard link(from, to) == 0 else {
            if errno == EEXIST { throw CheckpackError(.alreadyExists, "already exists", path: to) }
            throw CheckpackError.system("cannot create", path: to)
        }
        _ = unlink(from)
    }

    /// Swaps `a` and `b` in one step (both exist afterwards, exchanged), or
    /// returns false where the kernel or filesystem cannot.
    static func exchange(_ a: String, _ b: String) throws -> Bool {
        if ckpk_rename(a, b, CKPK_RENAME_EXCHANGE) == 0 { return true }
        guard errno == EINVAL || errno == ENOSYS else { throw CheckpackError.system("cannot exchange with \(b)", path: a) }
        return false
    }

    /// fsyncs a directory so that a rename inside it is durable.
    static func syncDirectory(_ path: String) throws {
        let fd = retrying { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else { throw CheckpackError.system("cannot open directory", path: path) }
        defer { _ = close(fd) }
        guard retrying({ fsync(fd) }) == 0 else { throw CheckpackError.system("fsync failed", path: path) }
    }

    /// Removes a file or a whole directory tree without following symlinks:
    /// the tree is emptied through descriptors (`Directory`), so an entry
    /// swapped for a link meanwhile loses the link, never what it points to.
    package static func removeTree(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if (info.st_mode & S_IFMT) == S_IFDIR, let directory = try? Directory.open(path) {
            directory.removeContents()
            _ = rmdir(path)   // fails on anything but an empty directory
        } else {
            _ = unlink(path)
        }
    }

    /// The regular files below `root` (symbolic links to files too), as
    /// relative `/`-separated paths in walk order: each directory's names sorted by their bytes.
    package static func regularFiles(under root: String, prefix: String = "") throws -> [String] {
        var files: [String] = []
        for (name, type) in try listDirectoryWithTypes(root) {
            let path = root + "/" + name, relative = prefix.isEmpty ? name : prefix + "/" + name
            var kind = mode_t(type) << 12   // DT_* values are the S_IF* values shifted down by 12
            var info = stat()
            if type == UInt8(DT_UNKNOWN) {   // the filesystem did not say: ask
                guard lstat(path, &info) == 0 else { continue }
                kind = info.st_mode & S_IFMT
            }
            switch kind {
            case S_IFDIR: files += try regularFiles(under: path, prefix: relative)
            case S_IFREG: files.append(relative)
            case S_IFLNK: if stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG { files.append(relative) }
            default: break
            }
        }
        return files
    }

    /// Names in a directory, without "." and "..", sorted by their bytes.
    package static func listDirectory(_ path: String) throws -> [String] {
        try listDirectoryWithTypes(path).map(\.name)
    }

    /// Names in a directory with their `d_type` (DT_UNKNOWN where the
    /// filesystem does not say), without "." and "..", sorted by their bytes.
    static func listDirectoryWithTypes(_ path: String) throws -> [(name: String, type: UInt8)] {
        guard let dir = opendir(path) else { throw CheckpackError.system("cannot read directory", path: path) }
        defer { closedir(dir) }
        var entries: [(name: [UInt8], type: UInt8)] = []
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 { throw CheckpackError.system("cannot read directory", path: path) }
                break
            }
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: UInt8.self, capacity: 256) { Array(UnsafeBufferPointer(start: $0, count: strlen(UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)))) }
            }
            if name == [0x2E] || name == [0x2E, 0x2E] { continue }
            entries.append((name, entry.pointee.d_type))
        }
        entries.sort { $0.name.lexicographicallyPrecedes($1.name) }
        return try entries.map { entry in
            guard let name = String(validating: entry.name, as: UTF8.self) else {
                throw CheckpackError(.invalidArgument, "holds a name that is not valid UTF-8: \(String(decoding: entry.name, as: UTF8.self))", path: path)
            }
            return (name, entry.type)
        }
    }
}

/// Which file a path named when it was looked at: device and inode.
struct FileIdentity: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64

    init(_ status: stat) {
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
    }
}
