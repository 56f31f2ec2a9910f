import Checkpack
// The data model of distributed checkpointing, after torch.distributed.checkpoint
// (metadata.py, planner.py, storage.py), in Swift spelling.

/// Element types, named as torch names them.
public enum DType: String, Sendable, Codable, CaseIterable {
    /// IEEE floats of 64, 32 and 16 bits, and bfloat16 (8 exponent bits, 7 mantissa bits).
    case float64, float32, float16, bfloat16
    /// The 8-bit floats torch names (4 or 5 exponent bits; `fnuz`: no negative zero).
    case float8_e4m3fn, float8_e5m2, float8_e4m3fnuz, float8_e5m2fnuz
    /// Signed integers of 8 to 64 bits.
    case int8, int16, int32, int64
    /// Unsigned integers of 8 to 64 bits.
    case uint8, uint16, uint32, uint64
    /// One byte per value, 0 or 1.
    case bool
    /// Complex numbers: two float32s, or two float64s.
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

    /// Bytes per element.
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
    /// Where the chunk starts, per dimension of the tensor.
    public var offsets: [Int]
    /// The chunk's shape.
    public var sizes: [Int]
    /// A chunk at `offsets` of shape `sizes`.
    public init(offsets: [Int], sizes: [Int]) {
        self.offsets = offsets
        self.sizes = sizes
    }
    /// Elements in the chunk.
    public var elementCount: Int { sizes.reduce(1, *) }
}

/// What a tensor's elements are.
public struct TensorProperties: Sendable, Codable, Hashable {
    /// The element type.
    public var dtype: DType
    /// Properties of a `dtype` tensor.
    public init(dtype: DType) { self.dtype = dtype }
}

/// A saved tensor: its global size and the chunks it was saved as.
public struct TensorStorageMetadata: Sendable, Codable, Hashable {
    /// The tensor's element type.
    public var properties: TensorProperties
    /// The tensor's global shape.
    public var size: [Int]
    /// The saved chunks, which together cover the tensor.
    public var chunks: [ChunkStorageMetadata]
    /// A saved tensor of `size`, in `chunks`.
    public init(properties: TensorProperties, size: [Int], chunks: [ChunkStorageMetadata]) {
        self.properties = properties
        self.size = size
        self.chunks = chunks
    }
}

/// A saved blob of bytes (it has no properties).
public struct BytesStorageMetadata: Sendable, Codable, Hashable {
    /// A blob's metadata.
    public init() {}
}

/// What the checkpoint holds under one name.
public enum StorageMetadata: Sendable, Codable, Hashable {
    /// A tensor, saved in chunks.
    case tensor(TensorStorageMetadata)
    /// A blob of bytes.
    case bytes(BytesStorageMetadata)
}

/// Names one saved item: a tensor chunk (fqn and chunk offset) or a byte blob
/// (fqn only). `index` is a lookup hint — the chunk's position in the
/// tensor's chunk list — and takes no part in equality or hashing.
public struct MetadataIndex: Sendable, Codable, Hashable, CustomStringConvertible {
    /// The item's fully qualified name in the state dict.
    public var fqn: String
    /// For a tensor chunk, where it starts in the tensor; nil for a blob.
    public var offset: [Int]?
    /// A lookup hint: the chunk's position in its tensor's chunk list.
    public var index: Int?

    /// The item `fqn` (a chunk at `offset`).
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
    /// The data file, relative to the checkpoint (an archive entry's name).
    public var relativePath: String
    /// Where the item's bytes start in the file.
    public var offset: UInt64
    /// How many bytes the item takes.
    public var length: UInt64
    /// Bytes `offset`..<`offset + length` of `relativePath`.
    public init(relativePath: String, offset: UInt64, length: UInt64) {
        self.relativePath = relativePath
        self.offset = offset
        self.length = length
    }
}

/// Everything a load needs to know about a checkpoint.
public struct Metadata: Sendable, Hashable {
    /// Every saved name: a tensor (dtype, shape, chunks) or a blob.
    public var stateDictMetadata: [String: StorageMetadata]
    /// Where each item's bytes are.
    public var storageData: [MetadataIndex: StorageInfo]
    /// What the save planner kept for the load planner.
    public var plannerData: [String: String]
    /// The layout version (`currentVersion` for what this library writes).
    public var version: String

    /// The version this library writes.
    public static let currentVersion = "checkpack-1"

    /// Metadata from its parts.
    public init(stateDictMetadata: [String: StorageMetadata], storageData: [MetadataIndex: StorageInfo] = [:],
                plannerData: [String: String] = [:], version: String = Metadata.currentVersion) {
        self.stateDictMetadata = stateDictMetadata
        self.storageData = storageData
        self.plannerData = plannerData
        self.version = version
    }
}

/// What a write item carries.
public enum WriteItemType: String, Sendable, Codable {
    /// A whole tensor, replicated or not.
    case tensor
    /// One rank's chunk of a sharded tensor.
    case shard
    /// A blob of bytes.
    case bytes
}

/// The tensor side of a write item: which chunk, of what.
public struct TensorWriteData: Sendable, Hashable {
    /// The chunk this item saves.
    public var chunk: ChunkStorageMetadata
    /// The tensor's element type.
    public var properties: TensorProperties
    /// The tensor's global size.
    public var size: [Int]
    /// The chunk `chunk` of a tensor of `size`.
    public init(chunk: ChunkStorageMetadata, properties: TensorProperties, size: [Int]) {
        self.chunk = chunk
        self.properties = properties
        self.size = size
    }
}

/// One item a rank saves: a tensor chunk or a blob.
public struct WriteItem: Sendable, Hashable {
    /// The item's name and, for a chunk, its offset.
    public var index: MetadataIndex
    /// A tensor, a shard (a chunk) or bytes.
    public var type: WriteItemType
    /// For a tensor item, its chunk and properties.
    public var tensorData: TensorWriteData?

    /// An item from its parts.
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

/// What a read item loads.
public enum LoadItemType: String, Sendable, Codable {
    /// A box of a tensor.
    case tensor
    /// A blob of bytes.
    case bytes
}

/// One copy of a load: the box `lengths` at `storageOffsets` inside the saved
/// chunk `storageIndex` goes to `destOffsets` inside the destination chunk `destIndex`.
public struct ReadItem: Sendable, Hashable {
    /// A tensor box or a blob.
    public var type: LoadItemType
    /// The destination chunk in the state dict being loaded.
    public var destIndex: MetadataIndex
    /// Where the box goes inside the destination chunk.
    public var destOffsets: [Int]
    /// The saved chunk the box comes from.
    public var storageIndex: MetadataIndex
    /// Where the box starts inside the saved chunk.
    public var storageOffsets: [Int]
    /// The box's shape.
    public var lengths: [Int]

    /// A read item from its parts.
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

/// What one rank saves: its items, and what the storage writer and planner add.
public struct SavePlan: Sendable, Hashable {
    /// The items, in the order they are written.
    public var items: [WriteItem]
    /// Set by the storage writer's global plan (for example a per-rank file prefix).
    public var storageData: String?
    /// Set by the save planner.
    public var plannerData: [String: String]
    /// A plan from its parts.
    public init(items: [WriteItem], storageData: String? = nil, plannerData: [String: String] = [:]) {
        self.items = items
        self.storageData = storageData
        self.plannerData = plannerData
    }
}

/// What one rank loads: its read items.
public struct LoadPlan: Sendable, Hashable {
    /// The items, each a copy of a box.
    public var items: [ReadItem]
    /// Set by the storage reader's global plan.
    public var storageData: String?
    /// A plan from its parts.
    public init(items: [ReadItem], storageData: String? = nil) {
        self.items = items
        self.storageData = storageData
    }
}

/// Where one saved item went.
public struct WriteResult: Sendable, Hashable {
    /// The item this result is for.
    public var index: MetadataIndex
    /// The item's bytes.
    public var sizeInBytes: UInt64
    /// The data file and byte range that hold it.
    public var storageData: StorageInfo
    /// Bytes a storage writer passes from a rank to its coordinator's
    /// `finalizeCheckpoint` with the rank's results; never in the metadata.
    public var writerRecord: [UInt8]?

    /// A result from its parts.
    public init(index: MetadataIndex, sizeInBytes: UInt64, storageData: StorageInfo, writerRecord: [UInt8]? = nil) {
        self.index = index
        self.sizeInBytes = sizeInBytes
        self.storageData = storageData
        self.writerRecord = writerRecord
    }
}
