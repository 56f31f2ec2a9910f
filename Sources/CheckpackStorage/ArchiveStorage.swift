import Checkpack
#if canImport(Glibc)
import Glibc
#endif

/// Saves a checkpoint straight into one archive. Each rank writes its items
/// into a staging part beside the destination (`.NAME.ckpk-part-RANK`), one
/// logical file `__{rank}_0.distcp` per rank with every item starting a new
/// frame (tensor items in byte planes, by their dtype), without waiting for the others. The coordinator's
/// `finalizeCheckpoint` joins the parts by copying their records (no
/// recompression), adds `.metadata`, writes the index last, fsyncs and renames.
/// Staging parts are removed on success and on failure.
public final class ArchiveStorageWriter: StorageWriter {
    public let options: WriterOptions
    private var path = ""
    private var rank = 0
    private var worldSize = 1
    private var coordinator = false

    /// `options` apply to every rank's part (codec, level, frame size, threads);
    /// the destination is replaced if it exists, as a directory checkpoint would be.
    public init(options: WriterOptions = WriterOptions()) {
        var options = options
        options.overwrite = true
        self.options = options
    }

    public func initializeWriter(checkpointID: String) throws { path = checkpointID }

    public func configureWriter(isCoordinator: Bool, rank: Int, worldSize: Int) throws {
        self.rank = rank
        self.worldSize = worldSize
        coordinator = isCoordinator
    }

    public func optimizeGlobalPlan(_ plans: [SavePlan]) throws -> [SavePlan] {
        CheckpointFiles.assignPrefixes(plans)
    }

    func partPath(_ rank: Int) -> String {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        return "\(directory.isEmpty ? "/" : directory)/.\(base).ckpk-part-\(rank)"
    }

    public func executeWrite(plan: SavePlan, planner: SavePlanner) throws -> [WriteResult] {
        let name = CheckpointFiles.dataFile(prefix: plan.storageData ?? CheckpointFiles.prefix(rank: rank))
        var partOptions = options
        partOptions.sync = false   // a staging part: joined into the archive (which is synced) and removed
        let part = try ArchiveWriter(path: partPath(rank), options: partOptions)
        // Each item's dtype, so tensor items are split into byte planes.
        let dtypes = plan.items.map { $0.tensorData?.properties.dtype.rawValue ?? "-" }
        try part.beginFile(name, attributes: plan.items.isEmpty ? [:] : [Format.itemDTypesKey: dtypes.joined(separator: ",")],
                           itemTypes: plan.items.map { $0.tensorData?.properties.dtype.planeElement })
        var offset: UInt64 = 0
        var results: [WriteResult] = []
        for item in plan.items {
            let bytes = try planner.resolveData(item)
            try part.markItemBoundary()   // every item starts its own frame
            try part.write(bytes)
            results.append(WriteResult(index: item.index, sizeInBytes: UInt64(bytes.count),
                                       storageData: StorageInfo(relativePath: name, offset: offset, length: UInt64(bytes.count))))
            offset += UInt64(bytes.count)
        }
        try part.endFile()
        try part.finish()
        return results
    }

    public func finalizeCheckpoint(metadata: Metadata, results: [[WriteResult]]) throws {
        var metadata = metadata
        metadata.storageData = storageData(results)
        let archive = try ArchiveWriter(path: path, options: options)
        do {
            // The parts were written by this save: copied without a second pass over their frames.
            for rank in 0..<worldSize { try archive.appendEntries(of: ArchiveReader(path: partPath(rank)), checkingFrames: false) }
            try archive.addFile(CheckpointFiles.metadataName, contents: try MetadataCoding.encode(metadata))
            try archive.finish()
        } catch {
            archive.cancel()
            throw error
        }
        for rank in 0..<worldSize { unlink(partPath(rank)) }
    }

    public func abort() {
        unlink(partPath(rank))
        // Every rank has finished writing when an abort is decided, so the
        // coordinator can also sweep parts of ranks that died.
        if coordinator { for rank in 0..<worldSize { unlink(partPath(rank)) } }
    }
}

/// Loads a checkpoint straight out of an archive — one written by
/// `ArchiveStorageWriter`, or a checkpoint directory that `checkpack pack`
/// made into one. Each item's byte range is read through the archive's index,
/// decoding only the frames that hold it. The checkpoint id is a path,
/// unless `open` reads it otherwise: with CheckpackRemote,
/// `ArchiveStorageReader(open: { try ArchiveLocation($0).openSource() })`
/// loads from `s3://` and `http(s)://` URLs, each rank fetching only its frames.
public final class ArchiveStorageReader: StorageReader, StorageByteSource {
    public private(set) var archive: ArchiveReader?
    private var metadata = Metadata(stateDictMetadata: [:])
    private let open: (String) throws -> any ArchiveSource

    public init(open: @escaping (String) throws -> any ArchiveSource = { try FileSource(path: $0) }) {
        self.open = open
    }

    public func initializeReader(checkpointID: String) throws {
        archive = try ArchiveReader(source: open(checkpointID))
    }

    private func opened() throws -> ArchiveReader {
        guard let archive else { throw CheckpackError(.invalidArgument, "the archive reader is not initialized") }
        return archive
    }

    public func loadMetadata() throws -> Metadata {
        let archive = try opened()
        guard let entry = archive.entry(named: CheckpointFiles.metadataName) else {
            throw CheckpackError(.notFound, "no \(CheckpointFiles.metadataName) entry; not a checkpoint archive", path: archive.source.name)
        }
        guard entry.size <= 1 << 30 else { throw CheckpackError(.limitExceeded, "metadata of \(entry.size) bytes is too large", path: archive.source.name) }
        return try MetadataCoding.decode(try archive.read(entry), source: "\(archive.source.name): \(CheckpointFiles.metadataName)")
    }

    public func configureReader(metadata: Metadata, isCoordinator: Bool, rank: Int, worldSize: Int) throws {
        self.metadata = metadata
    }

    public func executeRead(plan: LoadPlan, planner: LoadPlanner) throws {
        try execute(plan: plan, metadata: metadata, planner: planner)
    }

    func read(_ info: StorageInfo, offset: UInt64, count: Int) throws -> [UInt8] {
        let archive = try opened()
        guard let entry = archive.entry(named: info.relativePath) else {
            throw CheckpackError(.corrupt, "no entry \"\(info.relativePath)\" for bytes \(info.offset)+\(info.length) the metadata names", path: archive.source.name)
        }
        let (end, overflow) = info.offset.addingReportingOverflow(info.length)
        guard !overflow, end <= entry.size, offset + UInt64(count) <= info.length else {
            throw CheckpackError(.corrupt, "has \(entry.size) bytes, the metadata names \(info.offset)+\(info.length)", path: archive.source.name, entry: info.relativePath)
        }
        return try archive.read(entry, offset: info.offset + offset, count: count)
    }
}
