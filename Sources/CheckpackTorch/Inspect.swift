import Checkpack
import CheckpackStorage
import Foundation

/// What a checkpoint holds, tensor by tensor, whatever its form: a
/// torch.distributed.checkpoint directory, a `.safetensors` file or folder,
/// or an archive of any of them.
public struct Inspection: Sendable {
    public enum Format: String, Sendable {
        case torchDistributed = "torch.distributed.checkpoint"
        case checkpack = "checkpack checkpoint"
        case safetensors = "safetensors"
    }

    public struct Item: Sendable {
        public var name: String
        /// nil for a byte item (not a tensor).
        public var dtype: DType?
        /// The global shape.
        public var shape: [Int]
        public var chunks: [ChunkStorageMetadata]
        /// The files that hold it.
        public var files: [String]
        /// Bytes as saved.
        public var bytes: UInt64
        /// Bytes the item takes in the archive (its share of the frames that hold it); archives only.
        public var storedBytes: UInt64?
    }

    public var path: String
    public var format: Format
    public var inArchive: Bool
    public var items: [Item]
}

public enum Inspector {
    /// A directory or an archive, seen as named files with range reads.
    enum Tree {
        case directory(String)
        case archive(ArchiveReader)

        var names: [String] {
            switch self {
            case .directory(let root):
                return (try? FileSystem.regularFiles(under: root)) ?? []
            case .archive(let reader):
                return reader.entries.filter { $0.kind == .file }.map(\.name)
            }
        }

        func read(_ name: String, offset: UInt64 = 0, count: Int? = nil) throws -> [UInt8] {
            switch self {
            case .directory(let root):
                let file = try SystemFile.openForReading(root + "/" + name)
                let size = try file.size
                guard offset <= size else { throw CheckpackError(.truncated, "is shorter than \(offset) bytes", path: name) }
                let n = count ?? Int(size - offset)
                guard UInt64(n) <= size - offset else { throw CheckpackError(.truncated, "is shorter than \(offset + UInt64(n)) bytes", path: name) }
                return try file.read(count: n, at: offset)
            case .archive(let reader):
                guard let entry = reader.entry(named: name) else { throw CheckpackError(.notFound, "no such entry", entry: name) }
                return try reader.read(entry, offset: offset, count: count)
            }
        }

        /// The stored bytes of `range` of file `name`: each frame it overlaps
        /// counts in proportion to the overlap.
        func storedBytes(_ name: String, _ range: Range<UInt64>) -> UInt64? {
            guard case .archive(let reader) = self, let entry = reader.entry(named: name) else { return nil }
            var total = 0.0
            guard let frames = try? reader.frameExtents(of: entry) else { return nil }
            for frame in frames {
                let r = frame.entryRange
                let overlap = min(r.upperBound, range.upperBound) > max(r.lowerBound, range.lowerBound)
                    ? min(r.upperBound, range.upperBound) - max(r.lowerBound, range.lowerBound) : 0
                total += Double(frame.storedLength) * Double(overlap) / Double(r.count)
            }
            return UInt64(total.rounded())
        }
    }

    public static func inspect(path: String) throws -> Inspection {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CheckpackError(.io(ENOENT), "no such file or directory", path: path)
        }
        if isDirectory.boolValue { return try inspect(tree: .directory(path), path: path, inArchive: false) }
        if path.hasSuffix(".safetensors") {
            let directory = (path as NSString).deletingLastPathComponent
            return try inspectSafetensors(tree: .directory(directory.isEmpty ? "." : directory),
                                          files: [(path as NSString).lastPathComponent], path: path, inArchive: false)
        }
        return try inspect(tree: .archive(try ArchiveReader(path: path)), path: path, inArchive: true)
    }

    /// Inspects an archive already opened (from a file or a URL).
    public static func inspect(reader: ArchiveReader, path: String) throws -> Inspection {
        try inspect(tree: .archive(reader), path: path, inArchive: true)
    }

    static func inspect(tree: Tree, path: String, inArchive: Bool) throws -> Inspection {
        let names = tree.names
        if names.contains(".metadata") {
            let (metadata, format, _) = try decodeMetadataFile(try tree.read(".metadata"), source: path + "/.metadata")
            return inspection(metadata, tree: tree, path: path, format: format, inArchive: inArchive)
        }
        let shards = names.filter { $0.hasSuffix(".safetensors") }
        guard !shards.isEmpty else {
            throw CheckpackError(.notFound, "no checkpoint here (neither a .metadata file nor *.safetensors files)", path: path)
        }
        return try inspectSafetensors(tree: tree, files: shards, path: path, inArchive: inArchive)
    }

    /// A `.metadata` file: this package's JSON (it opens with `{`), or else
    /// torch's pickle, read by the safe pickle reader. `transformed` are the
    /// items that torch wrote through stream transforms (such as ZStandard).
    static func decodeMetadataFile(_ bytes: [UInt8], source: String) throws
        -> (metadata: Metadata, format: Inspection.Format, transformed: Set<MetadataIndex>) {
        if bytes.first == UInt8(ascii: "{") {
            return (try Metadata.decodeCheckpackJSON(bytes, source: source), .checkpack, [])
        }
        do {
            let torch = try TorchMetadataReader.decode(bytes)
            return (torch.metadata, .torchDistributed, Set(torch.transformDescriptors.keys))
        } catch let error as PickleError {
            throw CheckpackError(.corrupt, "\(error)", path: source)
        }
    }

    static func inspection(_ metadata: Metadata, tree: Tree, path: String, format: Inspection.Format, inArchive: Bool) -> Inspection {
        var storage: [String: [(MetadataIndex, StorageInfo)]] = [:]
        for (index, info) in metadata.storageData { storage[index.fqn, default: []].append((index, info)) }
        var items: [Inspection.Item] = []
        for (fqn, md) in metadata.stateDictMetadata.sorted(by: { $0.key < $1.key }) {
            let infos = storage[fqn] ?? []
            let bytes = infos.reduce(UInt64(0)) { $0 + $1.1.length }
            let stored = infos.reduce(UInt64?(0)) { sum, pair in
                tree.storedBytes(pair.1.relativePath, pair.1.offset..<pair.1.offset + pair.1.length).flatMap { s in sum.map { $0 + s } }
            }
            let files = Array(Set(infos.map(\.1.relativePath))).sorted()
            switch md {
            case .bytes:
                items.append(.init(name: fqn, dtype: nil, shape: [], chunks: [], files: files, bytes: bytes, storedBytes: stored))
            case .tensor(let t):
                items.append(.init(name: fqn, dtype: t.properties.dtype, shape: t.size, chunks: t.chunks, files: files,
                                   bytes: bytes, storedBytes: stored))
            }
        }
        return Inspection(path: path, format: format, inArchive: inArchive, items: items)
    }

    // MARK: safetensors

    /// safetensors dtype names → torch's.
    static func inspectSafetensors(tree: Tree, files: [String], path: String, inArchive: Bool) throws -> Inspection {
        var items: [Inspection.Item] = []
        for file in files {
            let size: UInt64
            switch tree {
            case .directory(let root): size = try SystemFile.openForReading(root + "/" + file).size
            case .archive(let reader): size = reader.entry(named: file)?.size ?? 0
            }
            let header = try SafetensorsHeader.parse({ try tree.read(file, offset: $0, count: $1) }, fileSize: size, name: file)
            for t in header.tensors {
                let range = header.dataStart + t.range.lowerBound..<header.dataStart + t.range.upperBound
                items.append(.init(name: t.name, dtype: t.dtype, shape: t.shape,
                                   chunks: [ChunkStorageMetadata(offsets: t.shape.map { _ in 0 }, sizes: t.shape)],
                                   files: [file], bytes: UInt64(t.range.count), storedBytes: tree.storedBytes(file, range)))
            }
        }
        return Inspection(path: path, format: .safetensors, inArchive: inArchive, items: items.sorted { $0.name < $1.name })
    }
}
