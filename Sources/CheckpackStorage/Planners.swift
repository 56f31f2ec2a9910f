import Checkpack
/// Turns a state dict into write items and the checkpoint's metadata, and
/// hands out each item's bytes when the storage writer asks.
public protocol SavePlanner: AnyObject {
    /// The state dict this rank saves.
    func setUp(stateDict: StateDict, isCoordinator: Bool)
    /// One write item per tensor chunk or blob of this rank.
    func createLocalPlan() throws -> SavePlan
    /// Coordinator only: all ranks' local plans in, final plans and metadata out.
    func createGlobalPlan(_ plans: [SavePlan]) throws -> (plans: [SavePlan], metadata: Metadata)
    /// This rank's final plan, as the coordinator sent it.
    func finishPlan(_ plan: SavePlan) throws -> SavePlan
    /// The bytes of one item: a chunk's contiguous row-major elements, or a blob.
    func resolveData(_ item: WriteItem) throws -> [UInt8]
}

/// Turns a state dict to load into and the checkpoint's metadata into read
/// items, and receives the bytes the storage reader fetches.
public protocol LoadPlanner: AnyObject {
    /// The state dict to load into, and the checkpoint's metadata.
    func setUp(stateDict: StateDict, metadata: Metadata, isCoordinator: Bool)
    /// One read item per overlap of a destination chunk with a saved chunk.
    func createLocalPlan() throws -> LoadPlan
    /// Coordinator only: every rank's final read plan.
    func createGlobalPlan(_ plans: [LoadPlan]) throws -> [LoadPlan]
    /// This rank's final read plan.
    func finishPlan(_ plan: LoadPlan) throws -> LoadPlan
    /// A byte item's content.
    func loadBytes(_ item: ReadItem, _ bytes: [UInt8]) throws
    /// A tensor item's box, as contiguous row-major bytes of shape `item.lengths`.
    func commitTensor(_ item: ReadItem, _ box: [UInt8]) throws
    /// The state dict as loaded so far.
    var stateDict: StateDict { get }
}

/// One write item per tensor, per local chunk of a sharded tensor, and per
/// byte blob. The global plan keeps each replicated item on one rank only
/// (the one with the least planned so far, as torch does).
public final class DefaultSavePlanner: SavePlanner {
    private var stateDict: StateDict = [:]
    /// A planner.
    public init() {}

    public func setUp(stateDict: StateDict, isCoordinator: Bool) {
        self.stateDict = stateDict
    }

    public func createLocalPlan() throws -> SavePlan {
        var items: [WriteItem] = []
        for (fqn, value) in stateDict.sorted(by: { $0.key < $1.key }) {
            switch value {
            case .tensor(let t):
                let chunk = ChunkStorageMetadata(offsets: [Int](repeating: 0, count: t.shape.count), sizes: t.shape)
                items.append(WriteItem(index: MetadataIndex(fqn: fqn, offset: chunk.offsets), type: .tensor,
                                       tensorData: TensorWriteData(chunk: chunk, properties: TensorProperties(dtype: t.dtype), size: t.shape)))
            case .sharded(let s):
                for c in s.chunks {
                    let chunk = ChunkStorageMetadata(offsets: c.offsets, sizes: c.tensor.shape)
                    items.append(WriteItem(index: MetadataIndex(fqn: fqn, offset: c.offsets), type: .shard,
                                           tensorData: TensorWriteData(chunk: chunk, properties: TensorProperties(dtype: s.dtype), size: s.globalShape)))
                }
            case .bytes:
                items.append(WriteItem(index: MetadataIndex(fqn: fqn), type: .bytes, tensorData: nil))
            }
        }
        return SavePlan(items: items)
    }

    public func createGlobalPlan(_ plans: [SavePlan]) throws -> (plans: [SavePlan], metadata: Metadata) {
        var plans = Self.deduplicate(plans)
        var entries: [String: StorageMetadata] = [:]
        for p in plans.indices {
            for i in plans[p].items.indices {
                let item = plans[p].items[i]
                let fqn = item.index.fqn
                guard let data = item.tensorData else {
                    if case .tensor = entries[fqn] { throw CheckpackError(.invalidArgument, "\"\(fqn)\" is a tensor on one rank and bytes on another") }
                    entries[fqn] = .bytes(BytesStorageMetadata())
                    continue
                }
                var md: TensorStorageMetadata
                switch entries[fqn] {
                case .bytes?: throw CheckpackError(.invalidArgument, "\"\(fqn)\" is bytes on one rank and a tensor on another")
                case .tensor(let existing)?:
                    guard existing.properties == data.properties, existing.size == data.size else {
                        throw CheckpackError(.invalidArgument, "\"\(fqn)\" has dtype \(existing.properties.dtype) and size \(existing.size) on one rank, \(data.properties.dtype) and \(data.size) on another")
                    }
                    md = existing
                case nil:
                    md = TensorStorageMetadata(properties: data.properties, size: data.size, chunks: [])
                }
                plans[p].items[i].index.index = md.chunks.count
                md.chunks.append(data.chunk)
                entries[fqn] = .tensor(md)
            }
        }
        return (plans, Metadata(stateDictMetadata: entries))
    }

    public func finishPlan(_ plan: SavePlan) throws -> SavePlan { plan }

    public func resolveData(_ item: WriteItem) throws -> [UInt8] {
        switch stateDict[item.index.fqn] {
        case .tensor(let t)?: return t.bytes
        case .sharded(let s)?:
            guard let chunk = s.chunks.first(where: { $0.offsets == item.index.offset }) else {
                throw CheckpackError(.invalidArgument, "no local chunk of \"\(item.index.fqn)\" at \(item.index.offset ?? [])")
            }
            return chunk.tensor.bytes
        case .bytes(let b)?: return b
        case nil: throw CheckpackError(.notFound, "the state dict has no \"\(item.index.fqn)\"")
        }
    }

    /// Keeps each item that several plans share in only one of them.
    static func deduplicate(_ plans: [SavePlan]) -> [SavePlan] {
        var owners: [MetadataIndex: [Int]] = [:]
        var order: [MetadataIndex] = []
        for (p, plan) in plans.enumerated() {
            for item in plan.items {
                if owners[item.index] == nil { order.append(item.index) }
                owners[item.index, default: []].append(p)
            }
        }
        var planned = [Int](repeating: 0, count: plans.count)
        var keep = Array(repeating: Set<MetadataIndex>(), count: plans.count)
        let sizes = Dictionary(plans.flatMap(\.items).map { ($0.index, $0.storageSize ?? 1) }, uniquingKeysWith: { a, _ in a })
        for index in order {
            let candidates = owners[index] ?? []
            guard let chosen = candidates.min(by: { (planned[$0], $0) < (planned[$1], $1) }) else { continue }
            planned[chosen] += sizes[index] ?? 1
            keep[chosen].insert(index)
        }
        return plans.enumerated().map { p, plan in
            var plan = plan
            plan.items = plan.items.filter { keep[p].contains($0.index) }
            return plan
        }
    }
}

/// Loads into the tensors and blobs of the given state dict, whatever their
/// chunking: each destination chunk is intersected with every saved chunk of
/// its tensor, and each overlap becomes one read item (resharding).
public final class DefaultLoadPlanner: LoadPlanner {
    public private(set) var stateDict: StateDict = [:]
    private var metadata = Metadata(stateDictMetadata: [:])
    /// A planner.
    public init() {}

    public func setUp(stateDict: StateDict, metadata: Metadata, isCoordinator: Bool) {
        self.stateDict = stateDict
        self.metadata = metadata
    }

    public func createLocalPlan() throws -> LoadPlan {
        var items: [ReadItem] = []
        for (fqn, value) in stateDict.sorted(by: { $0.key < $1.key }) {
            guard let saved = metadata.stateDictMetadata[fqn] else {
                throw CheckpackError(.notFound, "the checkpoint has no \"\(fqn)\"")
            }
            let destination: (dtype: DType, shape: [Int], chunks: [ChunkStorageMetadata])
            switch (value, saved) {
            case (.bytes, .bytes):
                items.append(ReadItem(type: .bytes, destIndex: MetadataIndex(fqn: fqn), destOffsets: [],
                                      storageIndex: MetadataIndex(fqn: fqn), storageOffsets: [], lengths: []))
                continue
            case (.tensor(let t), .tensor):
                destination = (t.dtype, t.shape, [ChunkStorageMetadata(offsets: [Int](repeating: 0, count: t.shape.count), sizes: t.shape)])
            case (.sharded(let s), .tensor):
                destination = (s.dtype, s.globalShape, s.chunks.map { ChunkStorageMetadata(offsets: $0.offsets, sizes: $0.tensor.shape) })
            case (.bytes, .tensor):
                throw CheckpackError(.invalidArgument, "\"\(fqn)\" is a tensor in the checkpoint but bytes in the state dict")
            case (_, .bytes):
                throw CheckpackError(.invalidArgument, "\"\(fqn)\" is bytes in the checkpoint but a tensor in the state dict")
            }
            guard case .tensor(let md) = saved else { continue }
            guard md.properties.dtype == destination.dtype else {
                throw CheckpackError(.invalidArgument, "\"\(fqn)\" was saved as \(md.properties.dtype) but is loaded as \(destination.dtype)")
            }
            guard md.size == destination.shape else {
                throw CheckpackError(.invalidArgument, "\"\(fqn)\" was saved with shape \(md.size) but is loaded with shape \(destination.shape)")
            }
            for (d, dest) in destination.chunks.enumerated() {
                var covered = 0
                for (s, chunk) in md.chunks.enumerated() {
                    guard let overlap = Self.overlap(dest, chunk) else { continue }
                    covered += overlap.lengths.reduce(1, *)
                    items.append(ReadItem(
                        type: .tensor,
                        destIndex: MetadataIndex(fqn: fqn, offset: dest.offsets, index: d),
                        destOffsets: zip(overlap.start, dest.offsets).map { $0 - $1 },
                        storageIndex: MetadataIndex(fqn: fqn, offset: chunk.offsets, index: s),
                        storageOffsets: zip(overlap.start, chunk.offsets).map { $0 - $1 },
                        lengths: overlap.lengths))
                }
                guard covered == dest.elementCount else {
                    throw CheckpackError(.corrupt, "the checkpoint covers \(covered) of the \(dest.elementCount) elements of \"\(fqn)\" at \(dest.offsets)")
                }
            }
        }
        return LoadPlan(items: items)
    }

    public func createGlobalPlan(_ plans: [LoadPlan]) throws -> [LoadPlan] { plans }
    public func finishPlan(_ plan: LoadPlan) throws -> LoadPlan { plan }

    public func loadBytes(_ item: ReadItem, _ bytes: [UInt8]) throws {
        stateDict[item.destIndex.fqn] = .bytes(bytes)
    }

    public func commitTensor(_ item: ReadItem, _ box: [UInt8]) throws {
        let fqn = item.destIndex.fqn
        switch stateDict[fqn] {
        case .tensor(var t)?:
            stateDict[fqn] = nil   // keep the bytes uniquely referenced while writing into them
            try Self.place(box, item, into: &t)
            stateDict[fqn] = .tensor(t)
        case .sharded(var s)?:
            guard let c = s.chunks.firstIndex(where: { $0.offsets == item.destIndex.offset }) else {
                throw CheckpackError(.invalidArgument, "no local chunk of \"\(fqn)\" at \(item.destIndex.offset ?? [])")
            }
            stateDict[fqn] = nil
            try Self.place(box, item, into: &s.chunks[c].tensor)
            stateDict[fqn] = .sharded(s)
        default:
            throw CheckpackError(.invalidArgument, "\"\(fqn)\" is not a tensor in the state dict")
        }
    }

    private static func place(_ box: [UInt8], _ item: ReadItem, into tensor: inout Tensor) throws {
        let size = tensor.dtype.elementSize
        guard box.count == item.lengths.reduce(1, *) * size else {
            throw CheckpackError(.corrupt, "read of \"\(item.destIndex.fqn)\" returned \(box.count) bytes for a box of \(item.lengths)")
        }
        let shape = tensor.shape
        try Box.check(shape: shape, origin: item.destOffsets, lengths: item.lengths, "destination \(item.destIndex)")
        box.withUnsafeBytes { src in
            tensor.bytes.withUnsafeMutableBytes { dst in
                Box.forEachRun(shape: shape, origin: item.destOffsets, lengths: item.lengths, elementSize: size) { t, b, n in
                    dst.baseAddress!.advanced(by: t).copyMemory(from: src.baseAddress!.advanced(by: b), byteCount: n)
                }
            }
        }
    }

    /// The intersection of two boxes, or nil when they do not meet (or it is empty).
    static func overlap(_ a: ChunkStorageMetadata, _ b: ChunkStorageMetadata) -> (start: [Int], lengths: [Int])? {
        var start: [Int] = [], lengths: [Int] = []
        for d in a.offsets.indices {
            let lower = max(a.offsets[d], b.offsets[d])
            let upper = min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d])
            guard upper > lower else { return nil }
            start.append(lower)
            lengths.append(upper - lower)
        }
        return (start, lengths)
    }
}
