import Checkpack
/// A dense tensor: element type, shape, and its elements as contiguous
/// row-major little-endian bytes.
public struct Tensor: Sendable, Equatable {
    /// The element type.
    public let dtype: DType
    /// The shape, row-major.
    public let shape: [Int]
    /// The elements, little-endian, row-major.
    public var bytes: [UInt8]

    /// A tensor of `shape` from its bytes; their count must be the shape's.
    public init(dtype: DType, shape: [Int], bytes: [UInt8]) throws {
        guard shape.allSatisfy({ $0 >= 0 }) else { throw CheckpackError(.invalidArgument, "negative dimension in shape \(shape)") }
        let expected = shape.reduce(1, *) * dtype.elementSize
        guard bytes.count == expected else {
            throw CheckpackError(.invalidArgument, "a \(dtype) tensor of shape \(shape) needs \(expected) bytes, got \(bytes.count)")
        }
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// A tensor of zero bytes, to load into (negative sizes count as 0).
    public static func zeros(_ dtype: DType, _ shape: [Int]) -> Tensor {
        let shape = shape.map { max(0, $0) }
        return Tensor(validated: dtype, shape, [UInt8](repeating: 0, count: shape.reduce(1, *) * dtype.elementSize))
    }

    private init(validated dtype: DType, _ shape: [Int], _ bytes: [UInt8]) {
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }
}

/// This rank's pieces of a tensor that is split across ranks.
public struct ShardedTensor: Sendable, Equatable {
    /// One rank's piece of the tensor.
    public struct Chunk: Sendable, Equatable {
        /// Where the chunk starts in the global tensor.
        public var offsets: [Int]
        /// The piece's elements.
        public var tensor: Tensor
        /// The piece `tensor`, at `offsets` in the global tensor.
        public init(offsets: [Int], tensor: Tensor) {
            self.offsets = offsets
            self.tensor = tensor
        }
    }

    /// The element type.
    public let dtype: DType
    /// The whole tensor's shape.
    public let globalShape: [Int]
    /// The pieces this rank holds.
    public var chunks: [Chunk]

    /// A sharded tensor; each chunk must fit `globalShape`.
    public init(dtype: DType, globalShape: [Int], chunks: [Chunk]) throws {
        for chunk in chunks {
            guard chunk.tensor.dtype == dtype, chunk.offsets.count == globalShape.count,
                  chunk.tensor.shape.count == globalShape.count else {
                throw CheckpackError(.invalidArgument, "chunk at \(chunk.offsets) does not match a \(dtype) tensor of shape \(globalShape)")
            }
            for d in globalShape.indices where chunk.offsets[d] < 0 || chunk.offsets[d] + chunk.tensor.shape[d] > globalShape[d] {
                throw CheckpackError(.invalidArgument, "chunk at \(chunk.offsets) of shape \(chunk.tensor.shape) lies outside \(globalShape)")
            }
        }
        self.dtype = dtype
        self.globalShape = globalShape
        self.chunks = chunks
    }

    /// Even shards along `dimension` for `rank` of `worldSize`, as torch's
    /// `Shard(dim)` placement cuts them (ceil division; trailing ranks may be empty).
    public static func evenShard(of tensor: Tensor, dimension: Int, rank: Int, worldSize: Int) throws -> ShardedTensor {
        let chunk = try evenShardRange(size: tensor.shape[dimension], rank: rank, worldSize: worldSize)
        var offsets = [Int](repeating: 0, count: tensor.shape.count)
        offsets[dimension] = chunk.lowerBound
        var sizes = tensor.shape
        sizes[dimension] = chunk.count
        let box = try Box.extract(from: tensor, origin: offsets, lengths: sizes)
        return try ShardedTensor(dtype: tensor.dtype, globalShape: tensor.shape, chunks: [Chunk(offsets: offsets, tensor: box)])
    }

    /// An all-zero local chunk of the even shard, to load into.
    public static func zerosEvenShard(_ dtype: DType, globalShape: [Int], dimension: Int, rank: Int, worldSize: Int) throws -> ShardedTensor {
        let chunk = try evenShardRange(size: globalShape[dimension], rank: rank, worldSize: worldSize)
        var offsets = [Int](repeating: 0, count: globalShape.count)
        offsets[dimension] = chunk.lowerBound
        var sizes = globalShape
        sizes[dimension] = chunk.count
        return try ShardedTensor(dtype: dtype, globalShape: globalShape, chunks: [Chunk(offsets: offsets, tensor: .zeros(dtype, sizes))])
    }

    static func evenShardRange(size: Int, rank: Int, worldSize: Int) throws -> Range<Int> {
        guard worldSize > 0, (0..<worldSize).contains(rank) else { throw CheckpackError(.invalidArgument, "rank \(rank) outside world of \(worldSize)") }
        let per = (size + worldSize - 1) / worldSize
        let start = min(size, rank * per)
        return start..<min(size, start + per)
    }
}

/// One value of a state dict.
public enum StateValue: Sendable, Equatable {
    /// A whole tensor (replicated: every rank holds the same).
    case tensor(Tensor)
    /// This rank's chunks of a sharded tensor.
    case sharded(ShardedTensor)
    /// A blob of bytes.
    case bytes([UInt8])
}

/// What a save writes or a load fills: values by fully qualified name.
public typealias StateDict = [String: StateValue]

/// Copies between a tensor's bytes and a box inside it, run by contiguous run.
enum Box {
    /// Calls `body(tensorByteOffset, boxByteOffset, byteCount)` for each
    /// contiguous run of the box `origin`/`lengths` inside a row-major tensor
    /// of `shape`, in the box's own row-major order.
    static func forEachRun(shape: [Int], origin: [Int], lengths: [Int], elementSize: Int,
                           _ body: (Int, Int, Int) throws -> Void) rethrows {
        let n = shape.count
        if n == 0 { return try body(0, 0, elementSize) }
        if lengths.contains(0) { return }
        var strides = [Int](repeating: 1, count: n)
        for d in stride(from: n - 2, through: 0, by: -1) { strides[d] = strides[d + 1] * shape[d + 1] }
        // Merge trailing dimensions the box covers completely into one run.
        var p = n - 1
        var runElements = lengths[p]
        while p > 0 && lengths[p] == shape[p] {
            p -= 1
            runElements *= lengths[p]
        }
        let runBytes = runElements * elementSize
        var counter = [Int](repeating: 0, count: p)   // position in dimensions 0..<p
        var boxOffset = 0
        while true {
            var element = origin[p] * strides[p]
            for d in 0..<p { element += (origin[d] + counter[d]) * strides[d] }
            try body(element * elementSize, boxOffset, runBytes)
            boxOffset += runBytes
            var d = p - 1
            while d >= 0 {
                counter[d] += 1
                if counter[d] < lengths[d] { break }
                counter[d] = 0
                d -= 1
            }
            if d < 0 { return }
        }
    }

    /// Throws unless the box lies inside `shape`: copies trust nothing a planner computed.
    static func check(shape: [Int], origin: [Int], lengths: [Int], _ what: @autoclosure () -> String) throws {
        guard origin.count == shape.count, lengths.count == shape.count,
              shape.indices.allSatisfy({ origin[$0] >= 0 && lengths[$0] >= 0 && origin[$0] <= shape[$0] - lengths[$0] }) else {
            throw CheckpackError(.invalidArgument, "box at \(origin) of \(lengths) does not fit \(what()) of shape \(shape)")
        }
    }

    static func extract(from tensor: Tensor, origin: [Int], lengths: [Int]) throws -> Tensor {
        try check(shape: tensor.shape, origin: origin, lengths: lengths, "the tensor")
        var out = [UInt8](repeating: 0, count: lengths.reduce(1, *) * tensor.dtype.elementSize)
        tensor.bytes.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                forEachRun(shape: tensor.shape, origin: origin, lengths: lengths, elementSize: tensor.dtype.elementSize) { t, b, n in
                    dst.baseAddress!.advanced(by: b).copyMemory(from: src.baseAddress!.advanced(by: t), byteCount: n)
                }
            }
        }
        return try Tensor(dtype: tensor.dtype, shape: lengths, bytes: out)
    }
}
