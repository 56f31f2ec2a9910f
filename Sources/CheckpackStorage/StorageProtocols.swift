import Checkpack
/// Where a save puts its bytes. Every rank has its own writer; the calls
/// come in this order: initialize, configure, optimizeLocalPlan, (coordinator)
/// optimizeGlobalPlan, executeWrite, (coordinator) finalizeCheckpoint. After an
/// error on any rank, `abort()` is called on every rank instead of finalizing.
public protocol StorageWriter: AnyObject {
    /// Where the checkpoint goes: a path, or a URL the backend understands.
    func initializeWriter(checkpointID: String) throws
    /// This rank's place in the save.
    func configureWriter(isCoordinator: Bool, rank: Int, worldSize: Int) throws
    /// May reshape this rank's plan before the coordinator sees it.
    func optimizeLocalPlan(_ plan: SavePlan) throws -> SavePlan
    /// Coordinator only: may reshape every rank's final plan (file prefixes, upload shares).
    func optimizeGlobalPlan(_ plans: [SavePlan]) throws -> [SavePlan]
    /// Writes this rank's items; returns where each one went.
    func executeWrite(plan: SavePlan, planner: SavePlanner) throws -> [WriteResult]
    /// Coordinator only: every rank's results in rank order; writes the metadata and makes the checkpoint whole.
    func finalizeCheckpoint(metadata: Metadata, results: [[WriteResult]]) throws
    /// Removes whatever this rank left behind. Must not throw.
    func abort()
}

/// Where a load finds its bytes. Calls: initialize, loadMetadata, configure,
/// optimizeLocalPlan, (coordinator) optimizeGlobalPlan, executeRead.
public protocol StorageReader: AnyObject {
    /// Where the checkpoint is: a path, or a URL the backend understands.
    func initializeReader(checkpointID: String) throws
    /// The checkpoint's metadata (read on the coordinator, then shared).
    func loadMetadata() throws -> Metadata
    /// This rank's place in the load, with the metadata.
    func configureReader(metadata: Metadata, isCoordinator: Bool, rank: Int, worldSize: Int) throws
    /// May reshape this rank's read plan.
    func optimizeLocalPlan(_ plan: LoadPlan) throws -> LoadPlan
    /// Coordinator only: may reshape every rank's read plan.
    func optimizeGlobalPlan(_ plans: [LoadPlan]) throws -> [LoadPlan]
    /// Reads this rank's items and hands each to the planner.
    func executeRead(plan: LoadPlan, planner: LoadPlanner) throws
}

/// Backends that do not reshape plans need not write these.
extension StorageWriter {
    /// The plan unchanged.
    public func optimizeLocalPlan(_ plan: SavePlan) throws -> SavePlan { plan }
}

extension StorageReader {
    /// The plan unchanged.
    public func optimizeLocalPlan(_ plan: LoadPlan) throws -> LoadPlan { plan }
    /// The plans unchanged.
    public func optimizeGlobalPlan(_ plans: [LoadPlan]) throws -> [LoadPlan] { plans }
}

/// Reads byte ranges of the files a checkpoint's `StorageInfo`s name.
protocol StorageByteSource {
    func read(_ info: StorageInfo, offset: UInt64, count: Int) throws -> [UInt8]
}

/// The file layout both backends share: one data file per rank and a metadata file.
enum CheckpointFiles {
    static let metadataName = ".metadata"
    static func dataFile(prefix: String) -> String { prefix + "0.distcp" }
    static func prefix(rank: Int) -> String { "__\(rank)_" }

    /// Gives each rank's plan its file prefix (the writers' global plan step).
    static func assignPrefixes(_ plans: [SavePlan]) -> [SavePlan] {
        plans.enumerated().map { rank, plan in
            var plan = plan
            plan.storageData = prefix(rank: rank)
            return plan
        }
    }
}

extension StorageByteSource {
    /// Executes a load plan against this source: each item's saved chunk is
    /// located through the metadata, and only the byte range that holds the
    /// item's box is read (for a row slice, just those rows).
    func execute(plan: LoadPlan, metadata: Metadata, planner: LoadPlanner) throws {
        for item in plan.items {
            guard let info = metadata.storageData[item.storageIndex] else {
                throw CheckpackError(.corrupt, "the checkpoint's metadata has no storage for \(item.storageIndex)")
            }
            do {
                switch item.type {
                case .bytes:
                    try planner.loadBytes(item, try read(info, offset: 0, count: try Int(checkingLength: info.length, item)))
                case .tensor:
                    try planner.commitTensor(item, try readBox(item, info, metadata))
                }
            } catch {
                throw CheckpackError.wrapping(error, "loading \(item.storageIndex) from \(info.relativePath) bytes \(info.offset)+\(info.length)")
            }
        }
    }

    private func readBox(_ item: ReadItem, _ info: StorageInfo, _ metadata: Metadata) throws -> [UInt8] {
        guard case .tensor(let md)? = metadata.stateDictMetadata[item.storageIndex.fqn],
              let chunk = md.chunks.first(where: { $0.offsets == item.storageIndex.offset }) else {
            throw CheckpackError(.corrupt, "the checkpoint's metadata has no chunk \(item.storageIndex)")
        }
        let size = md.properties.dtype.elementSize
        guard info.length == UInt64(chunk.elementCount * size) else {
            throw CheckpackError(.corrupt, "\(item.storageIndex) is stored in \(info.length) bytes, its chunk \(chunk.sizes) needs \(chunk.elementCount * size)")
        }
        try Box.check(shape: chunk.sizes, origin: item.storageOffsets, lengths: item.lengths, "saved chunk \(item.storageIndex)")
        // The runs of the box inside the saved chunk, and the span that holds them all.
        var first = Int.max, last = 0
        Box.forEachRun(shape: chunk.sizes, origin: item.storageOffsets, lengths: item.lengths, elementSize: size) { t, _, n in
            first = min(first, t)
            last = max(last, t + n)
        }
        var box = [UInt8](repeating: 0, count: item.lengths.reduce(1, *) * size)
        guard first < last else { return box }
        let span = try read(info, offset: UInt64(first), count: last - first)
        span.withUnsafeBytes { src in
            box.withUnsafeMutableBytes { dst in
                Box.forEachRun(shape: chunk.sizes, origin: item.storageOffsets, lengths: item.lengths, elementSize: size) { t, b, n in
                    dst.baseAddress!.advanced(by: b).copyMemory(from: src.baseAddress!.advanced(by: t - first), byteCount: n)
                }
            }
        }
        return box
    }
}

extension Int {
    init(checkingLength length: UInt64, _ item: ReadItem) throws {
        guard length <= UInt64(Int.max) else { throw CheckpackError(.limitExceeded, "\(item.storageIndex) claims \(length) bytes") }
        self = Int(length)
    }
}
