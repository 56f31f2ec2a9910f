#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What `pack` or `unpack` did.
public struct TreeSummary: Sendable {
    /// Files packed or unpacked.
    public var files = 0
    /// Directories packed or unpacked.
    public var directories = 0
    /// Bytes of file content.
    public var bytes: UInt64 = 0
    /// The archive's size, when one was written.
    public var archiveBytes: UInt64 = 0
}

/// How one file of a tree should be packed: where its items start (frames
/// are cut there), each item's element type (tensor items go into byte
/// planes), and attributes to record with it.
public struct FileLayout: Sendable, Equatable {
    /// Offsets in the file where items start (not 0).
    public var itemBoundaries: [UInt64]
    /// Item k's element type, for k = 0 (the item at offset 0) and on; nil or missing: none.
    public var itemTypes: [ElementType?]
    /// Attributes recorded with the entry.
    public var attributes: [String: String]
    /// A layout of these items, types and attributes.
    public init(itemBoundaries: [UInt64] = [], itemTypes: [ElementType?] = [], attributes: [String: String] = [:]) {
        self.itemBoundaries = itemBoundaries
        self.itemTypes = itemTypes
        self.attributes = attributes
    }
}

/// Packs a directory tree into an archive.
public enum Packer {
    struct Item {
        var name: String
        var path: String
        var kind: EntryKind
        var mode: UInt32
        var size: UInt64
        /// The file the walk saw; pack reads only that file.
        var identity: FileIdentity? = nil
    }

    /// Archives every file and directory below `directory`, depth first with
    /// each directory's names in byte order, with their permission bits. Symbolic links to files are
    /// stored as the files they point to; links to directories and special
    /// files are refused.
    /// `layouts` (entry name → layout) lets a caller that understands the
    /// files' formats cut frames at their items; other files get fixed-size frames.
    @discardableResult
    public static func pack(directory: String, to archive: String, options: WriterOptions = WriterOptions(),
                            layouts: [String: FileLayout] = [:],
                            progress: ((_ done: UInt64, _ total: UInt64) -> Void)? = nil) throws -> TreeSummary {
        try pack(directory: directory, into: { _ in try ArchiveWriter(path: archive, options: options) }, layouts: layouts, progress: progress)
    }

    /// Packs a directory into an archive written to the sink `makeSink` gives
    /// (a remote object, say). It is made once the tree was walked, so a
    /// missing or unreadable source starts no upload, and it learns what the
    /// walk found (the bytes to pack, for choosing a part size).
    @discardableResult
    public static func pack(directory: String, into makeSink: (TreeSummary) throws -> any ArchiveSink, options: WriterOptions = WriterOptions(),
                            layouts: [String: FileLayout] = [:],
                            progress: ((_ done: UInt64, _ total: UInt64) -> Void)? = nil) throws -> TreeSummary {
        try pack(directory: directory, into: { try ArchiveWriter(sink: makeSink($0), options: options) }, layouts: layouts, progress: progress)
    }

    private static func pack(directory: String, into makeWriter: (TreeSummary) throws -> ArchiveWriter, layouts: [String: FileLayout],
                             progress: ((_ done: UInt64, _ total: UInt64) -> Void)?) throws -> TreeSummary {
        guard FileSystem.isDirectory(directory) else {
            throw CheckpackError(FileSystem.exists(directory) ? .io(ENOTDIR) : .io(ENOENT),
                                 FileSystem.exists(directory) ? "is not a directory" : "no such directory", path: directory)
        }
        var items: [Item] = []
        try walk(directory, prefix: "", into: &items)
        var summary = TreeSummary()
        for item in items {
            if item.kind == .file { summary.files += 1; summary.bytes += item.size } else { summary.directories += 1 }
        }
        let writer = try makeWriter(summary)
        let total = summary.bytes
        if let progress { writer.onProgress = { progress($0, total) } }
        for item in items {
            switch item.kind {
            case .directory: try writer.addDirectory(item.name, mode: item.mode)
            case .file:
                let layout = layouts[item.name] ?? FileLayout()
                try writer.addFile(item.name, fromPath: item.path, mode: item.mode, size: item.size, identity: item.identity,
                                   attributes: layout.attributes, itemBoundaries: layout.itemBoundaries, itemTypes: layout.itemTypes)
            }
        }
        try writer.finish()
        summary.archiveBytes = writer.bytesWritten
        return summary
    }

    private static func walk(_ path: String, prefix: String, into items: inout [Item]) throws {
        for name in try FileSystem.listDirectory(path) {
            let child = path + "/" + name
            let entryName = prefix.isEmpty ? name : prefix + "/" + name
            do {
                try EntryName.validate(entryName)
            } catch let error as CheckpackError {
                throw CheckpackError(.invalidArgument, "cannot be archived: \(error.message)", path: child)
            }
            var info = stat()
            guard lstat(child, &info) == 0 else { throw CheckpackError.system("cannot stat", path: child) }
            if (info.st_mode & S_IFMT) == S_IFLNK {
                guard stat(child, &info) == 0 else { throw CheckpackError.system("broken symbolic link", path: child) }
                if (info.st_mode & S_IFMT) == S_IFDIR {
                    throw CheckpackError(.invalidArgument, "is a symbolic link to a directory; pack its target instead", path: child)
                }
            }
            let mode = UInt32(info.st_mode) & Format.maxMode
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                items.append(Item(name: entryName, path: child, kind: .directory, mode: mode, size: 0))
                try walk(child, prefix: entryName, into: &items)
            case S_IFREG:
                items.append(Item(name: entryName, path: child, kind: .file, mode: mode, size: UInt64(info.st_size),
                                  identity: FileIdentity(info)))
            default:
                throw CheckpackError(.invalidArgument, "is not a regular file or directory", path: child)
            }
        }
    }
}
