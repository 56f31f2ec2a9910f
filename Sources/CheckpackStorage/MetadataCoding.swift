import Checkpack
import Foundation

/// The `.metadata` file of both backends: UTF-8 JSON, described in
/// spec/CHECKPOINT.md. Written with sorted keys, so the same checkpoint gives
/// the same bytes.
enum MetadataCoding {
    static let format = "checkpack-checkpoint-metadata"

    private struct File: Codable {
        var format: String
        var version: String
        var stateDict: [String: Item]
        var storage: [Storage]
        var plannerData: [String: String]

        enum CodingKeys: String, CodingKey {
            case format, version, storage
            case stateDict = "state_dict"
            case plannerData = "planner_data"
        }
    }

    private struct Item: Codable {
        var type: String                // "tensor" or "bytes"
        var dtype: DType?
        var size: [Int]?
        var chunks: [ChunkStorageMetadata]?
    }

    private struct Storage: Codable {
        var fqn: String
        var chunkOffsets: [Int]?
        var chunkIndex: Int?
        var relativePath: String
        var offset: UInt64
        var length: UInt64

        enum CodingKeys: String, CodingKey {
            case fqn, offset, length
            case chunkOffsets = "chunk_offsets"
            case chunkIndex = "chunk_index"
            case relativePath = "relative_path"
        }
    }

    static func encode(_ metadata: Metadata) throws -> [UInt8] {
        var items: [String: Item] = [:]
        for (fqn, md) in metadata.stateDictMetadata {
            switch md {
            case .tensor(let t): items[fqn] = Item(type: "tensor", dtype: t.properties.dtype, size: t.size, chunks: t.chunks)
            case .bytes: items[fqn] = Item(type: "bytes")
            }
        }
        let storage = metadata.storageData.map { index, info in
            Storage(fqn: index.fqn, chunkOffsets: index.offset, chunkIndex: index.index, relativePath: info.relativePath,
                    offset: info.offset, length: info.length)
        }.sorted { $0.fqn != $1.fqn ? $0.fqn < $1.fqn : ($0.chunkOffsets ?? []).lexicographicallyPrecedes($1.chunkOffsets ?? []) }
        let file = File(format: format, version: metadata.version, stateDict: items, storage: storage, plannerData: metadata.plannerData)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return Array(try encoder.encode(file))
    }

    static func decode(_ bytes: [UInt8], source: String) throws -> Metadata {
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: Data(bytes))
        } catch {
            throw CheckpackError(.corrupt, "\(source): not checkpoint metadata (\(error))")
        }
        guard file.format == format else { throw CheckpackError(.corrupt, "\(source): unknown metadata format \"\(file.format)\"") }
        var entries: [String: StorageMetadata] = [:]
        for (fqn, item) in file.stateDict {
            switch item.type {
            case "bytes": entries[fqn] = .bytes(BytesStorageMetadata())
            case "tensor":
                guard let dtype = item.dtype, let size = item.size, let chunks = item.chunks else {
                    throw CheckpackError(.corrupt, "\(source): tensor \"\(fqn)\" lacks dtype, size or chunks")
                }
                guard ShapeMath.byteCount(size, elementSize: dtype.elementSize) != nil else {
                    throw CheckpackError(.corrupt, "\(source): tensor \"\(fqn)\" has size \(size), negative or beyond \(ShapeMath.maxBytes) bytes")
                }
                for c in chunks where !ShapeMath.chunk(c, fits: size) {
                    throw CheckpackError(.corrupt, "\(source): chunk \(c.offsets) of \(c.sizes) of \"\(fqn)\" lies outside \(size)")
                }
                entries[fqn] = .tensor(TensorStorageMetadata(properties: TensorProperties(dtype: dtype), size: size, chunks: chunks))
            default:
                throw CheckpackError(.corrupt, "\(source): \"\(fqn)\" has unknown type \"\(item.type)\"")
            }
        }
        var storage: [MetadataIndex: StorageInfo] = [:]
        for s in file.storage {
            guard ShapeMath.range(offset: s.offset, length: s.length) else {
                throw CheckpackError(.corrupt, "\(source): \"\(s.fqn)\" is stored at \(s.offset)+\(s.length), beyond \(ShapeMath.maxBytes) bytes")
            }
            storage[MetadataIndex(fqn: s.fqn, offset: s.chunkOffsets, index: s.chunkIndex)] =
                StorageInfo(relativePath: s.relativePath, offset: s.offset, length: s.length)
        }
        return Metadata(stateDictMetadata: entries, storageData: storage, plannerData: file.plannerData, version: file.version)
    }
}

extension Metadata {
    /// Decodes a `.metadata` file written by this package's backends (JSON, spec/CHECKPOINT.md).
    public static func decodeCheckpackJSON(_ bytes: [UInt8], source: String) throws -> Metadata {
        try MetadataCoding.decode(bytes, source: source)
    }
}
