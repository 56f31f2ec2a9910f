import Checkpack
// The data model of distributed checkpointing, after torch.distributed.checkpoint
// (metadata.py, planner.py, storage.py), in Swift spelling.

/// Element types, named as torch names them.
public enum DType: String, Sendable, Codable, CaseIterable {
    case float64, float32, float16, bfloat16
    case float8_e4m3fn, float8_e5m2, float8_e4m3fnuz, float8_e5m2fnuz
    case int8, int16, int32, int64
    case uint8, uint16, uint32, uint64
    case bool
    case complex64, complex128

    /// How the byte-plane transform sees an element: a complex number as its
    /// two floats; nil where planes cannot help (one-byte types, bool).
    public var planeElement: ElementType? {
        switch self {
        case .bfloat16, .float16: return ElementType(size: 2, isFloat: true)
        case .float32, .complex64: return ElementType(size: 4, isFloat: true)
        case .float64, .complex128: return ElementType(size: 8, isFloat: true)
        case .int16, .uint16: return ElementType(size: 2, isFloat: false)
        case .int32, .uint32: return ElementType(size: 4, isFloat: false)
        case .int64, .uint64: return ElementType(size: 8, isFloat: false)
        case .float8_e4m3fn, .float8_e5m2, .float8_e4m3fnuz, .float8_e5m2fnuz, .int8, .uint8, .bool: return nil
        }
    }

    public var elementSize: Int {
        switch self {
        case .float8_e4m3fn, .float8_e5m2, .float8_e4m3fnuz, .float8_e5m2fnuz, .int8, .uint8, .bool: return 1
        case .float16, .bfloat16, .int16, .uint16: return 2
        case .float32, .int32, .uint32: return 4
        case .float64, .int64, .uint64, .complex64: return 8
        case .complex128: return 16
        }
    }
}

/// Checked arithmetic for shapes read from metadata: every decoder of
/// tensor metadata (JSON and pickled `.metadata`, safetensors headers)
/// validates with these, so the code after it may multiply freely.
public enum ShapeMath {
    /// The largest tensor or range a checkpoint may describe: 2^62 bytes.
    public static let maxBytes = 1 << 62

    /// Bytes of a tensor of `shape` with elements of `elementSize`, or nil when
    /// a dimension is negative or the product is beyond `maxBytes`.
    public static func byteCount(_ shape: [Int], elementSize: Int) -> Int? {
        var total = elementSize
        for dimension in shape {
            guard dimension >= 0 else { return nil }
            let (product, overflow) = total.multipliedReportingOverflow(by: dimension)
            guard !overflow, product <= maxBytes else { return nil }
            total = product
        }
        return total
    }

    /// Whether a chunk lies inside a tensor of `size`: as many dimensions, no
    /// negative numbers, offset + length within each dimension (no overflow).
    public static func chunk(_ chunk: ChunkStorageMetadata, fits size: [Int]) -> Bool {
        guard chunk.offsets.count == size.count, chunk.sizes.count == size.count else { return false }
        return size.indices.allSatisfy { i in
            let (end, overflow) = chunk.offsets[i].addingReportingOverflow(chunk.sizes[i])
            return chunk.offsets[i] >= 0 && chunk.sizes[i] >= 0 && !overflow && end <= size[i]
        }
    }

    /// Whether `offset + length` of a stored item fits in `maxBytes`.
    public static func range(offset: UInt64, length: UInt64) -> Bool {
        let (end, overflow) = offset.addingReportingOverflow(length)
        return !overflow && end <= UInt64(maxBytes)
    }
}

/// A box inside a tensor: where it starts and how large it is, per dimension.
public struct ChunkStorageMetadata: Sendable, Codable, Hashable {
    public var offsets: [Int]
    public var sizes: [Int]
    public init(offsets: [Int], sizes: [Int]) {
        self.offsets = offsets
        self.sizes = sizes
    }
    public var elementCount: Int { sizes.reduce(1, *) }
}

public struct TensorProperties: Sendable, Codable, Hashable {
    public var dtype: DType
    public init(dtype: DType) { self.dtype = dtype }
}

/// A saved tensor: its global size and the chunks it was saved as.
public struct TensorStorageMetadata: Sendable, Codable, Hashable {
    public var properties: TensorProperties
    public var size: [Int]
    public var chunks: [ChunkStorageMetadata]
    public init(properties: TensorProperties, size: [Int], chunks: [ChunkStorageMetadata]) {
        self.properties = properties
        self.size = size
        self.chunks = chunks
    }
}

public struct BytesStorageMetadata: Sendable, Codable, Hashable {
    public init() {}
}

/// What the checkpoint holds under one name.
public enum StorageMetadata: Sendable, Codable, Hashable {
    case tensor(TensorStorageMetadata)
    case bytes(BytesStorageMetadata)
}

/// Names one saved item: a tensor chunk (fqn and chunk offset) or a byte blob
/// (fqn only). `index` is a lookup hint — the chunk's position in the
/// tensor's chunk list — and takes no part in equality or hashing.
public struct MetadataIndex: Sendable, Codable, Hashable, CustomStringConvertible {
    public var fqn: String
    public var offset: [Int]?
    public var index: Int?

    public init(fqn: String, offset: [Int]? = nil, index: Int? = nil) {
        self.fqn = fqn
        self.offset = offset
        self.index = index
    }

    public static func == (a: MetadataIndex, b: MetadataIndex) -> Bool { a.fqn == b.fqn && a.offset == b.offset }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(fqn)
        hasher.combine(offset)
    }

    public var description: String {
        offset.map { "\(fqn)\($0)" } ?? fqn
    }
}

/// Where an item's bytes are: a file (logical file, in an archive) and a
/// byte range inside it.
public struct StorageInfo: Sendable, Codable, Hashable {
    public var relativePath: String
    public var offset: UInt64
    public var length: UInt64
    public init(relativePath: String, offset: UInt64, length: UInt64) {
        self.relativePath = relativePath
        self.offset = offset
        self.length = length
    }
}

/// Everything a load needs to know about a checkpoint.
public struct Metadata: Sendable, Hashable {
    public var stateDictMetadata: [String: StorageMetadata]
    public var storageData: [MetadataIndex: StorageInfo]
    public var plannerData: [String: String]
    public var version: String

    public static let currentVersion = "checkpack-1"

    public init(stateDictMetadata: [String: StorageMetadata], storageData: [MetadataIndex: StorageInfo] = [:],
                plannerData: [String: String] = [:], version: String = Metadata.currentVersion) {
        self.stateDictMetadata = stateDictMetadata
        self.storageData = storageData
        self.plannerData = plannerData
        self.version = version
    }
}

public enum WriteItemType: String, Sendable, Codable {
    /// A whole tensor, replicated or not.
    case tensor
    /// One rank's chunk of a sharded tensor.
    case shard
    case bytes
}

public struct TensorWriteData: Sendable, Hashable {
    public var chunk: ChunkStorageMetadata
    public var properties: TensorProperties
    /// The tensor's global size.
    public var size: [Int]
    public init(chunk: ChunkStorageMetadata, properties: TensorProperties, size: [Int]) {
        self.chunk = chunk
        self.properties = properties
        self.size = size
    }
}

public struct WriteItem: Sendable, Hashable {
    public var index: MetadataIndex
    public var type: WriteItemType
    public var tensorData: TensorWriteData?

    public init(index: MetadataIndex, type: WriteItemType, tensorData: TensorWriteData? = nil) {
        self.index = index
        self.type = type
        self.tensorData = tensorData
    }

    /// Bytes the item will take in storage, when known.
    public var storageSize: Int? {
        tensorData.map { $0.chunk.elementCount * $0.properties.dtype.elementSize }
    }
}

public enum LoadItemType: String, Sendable, Codable {
    case tensor
    case bytes
}

/// One copy of a load: the box `lengths` at `storageOffsets` inside the saved
/// chunk `storageIndex` goes to `destOffsets` inside the destination chunk `destIndex`.
public struct ReadItem: Sendable, Hashable {
    public var type: LoadItemType
    public var destIndex: MetadataIndex
    public var destOffsets: [Int]
    public var storageIndex: MetadataIndex
    public var storageOffsets: [Int]
    public var lengths: [Int]

    public init(type: LoadItemType, destIndex: MetadataIndex, destOffsets: [Int], storageIndex: MetadataIndex,
                storageOffsets: [Int], lengths: [Int]) {
        self.type = type
        self.destIndex = destIndex
        self.destOffsets = destOffsets
        self.storageIndex = storageIndex
        self.storageOffsets = storageOffsets
        self.lengths = lengths
    }
}

public struct SavePlan: Sendable, Hashable {
    public var items: [WriteItem]
    /// Set by the storage writer's global plan (for example a per-rank file prefix).
    public var storageData: String?
    public var plannerData: [String: String]
    public init(items: [WriteItem], storageData: String? = nil, plannerData: [String: String] = [:]) {
        self.items = items
        self.storageData = storageData
        self.plannerData = plannerData
    }
}

public struct LoadPlan: Sendable, Hashable {
    public var items: [ReadItem]
    public var storageData: String?
    public init(items: [ReadItem], storageData: String? = nil) {
        self.items = items
        self.storageData = storageData
    }
}

public struct WriteResult: Sendable, Hashable {
    public var index: MetadataIndex
    public var sizeInBytes: UInt64
    public var storageData: StorageInfo
    /// Bytes a storage writer passes from a rank to its coordinator's
    /// `finalizeCheckpoint` with the rank's results; never in the metadata.
    public var writerRecord: [UInt8]?

    public init(index: MetadataIndex, sizeInBytes: UInt64, storageData: StorageInfo, writerRecord: [UInt8]? = nil) {
        self.index = index
        self.sizeInBytes = sizeInBytes
        self.storageData = storageData
        self.writerRecord = writerRecord
    }
}
