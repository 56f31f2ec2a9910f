import Checkpack
import CheckpackRemote
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
///
/// With an `s3://bucket/key` checkpoint id (S3 settings from the AWS_*
/// environment), the archive is one S3 object made by one multipart upload
/// that every rank fills (spec/CHECKPOINT.md section 5): the coordinator
/// creates it and plans each rank's part numbers, each rank uploads its
/// records as a segment, and the coordinator completes it; a failure on any
/// rank aborts it.
public final class ArchiveStorageWriter: StorageWriter {
    /// The compression every rank's data uses.
    public let options: WriterOptions
    private var path = ""
    private var rank = 0
    private var worldSize = 1
    private var coordinator = false
    /// For an s3:// archive: the object, and this rank's share of the upload once planned.
    private var object: S3Object?
    private var share: UploadShare?

    private let environment: [String: String]?

    /// `options` apply to every rank's part (codec, level, frame size, threads);
    /// the destination is replaced if it exists, as a directory checkpoint would be.
    /// S3 settings come from `environment` (nil: this process's).
    public init(options: WriterOptions = WriterOptions(), environment: [String: String]? = nil) {
        var options = options
        options.overwrite = true
        self.options = options
        self.environment = environment
    }

    public func initializeWriter(checkpointID: String) throws {
        path = checkpointID
        let location = try ArchiveLocation(checkpointID)
        object = location.isRemote ? try location.s3Object(environment: environment) : nil
    }

    public func configureWriter(isCoordinator: Bool, rank: Int, worldSize: Int) throws {
        self.rank = rank
        self.worldSize = worldSize
        coordinator = isCoordinator
    }

    public func optimizeGlobalPlan(_ plans: [SavePlan]) throws -> [SavePlan] {
        let plans = CheckpointFiles.assignPrefixes(plans)
        guard let object else { return plans }
        let planned = plans.map { $0.items.reduce(UInt64(0)) { $0 + $1.plannedBytes } }
        let (partSize, ranges) = try SharedUpload.plan(plannedBytes: planned, coordinator: rank)
        let id = try SharedUpload.create(object)
        return zip(plans, ranges).map { plan, range in
            var plan = plan
            plan.storageData = UploadShare(prefix: plan.storageData ?? "", uploadID: id, parts: range, partSize: partSize).encoded
            return plan
        }
    }

    func partPath(_ rank: Int) -> String {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        return "\(directory.isEmpty ? "/" : directory)/.\(base).ckpk-part-\(rank)"
    }

    public func executeWrite(plan: SavePlan, planner: SavePlanner) throws -> [WriteResult] {
        if let object {
            guard let share = plan.storageData.flatMap(UploadShare.init(encoded:)) else {
                throw CheckpackError(.invalidArgument, "no part numbers were planned for rank \(rank)", path: path)
            }
            self.share = share
            let sink = try S3SegmentSink(object: object, uploadID: share.uploadID, parts: share.parts, partSize: share.partSize,
                                         holdsFirst: coordinator)
            let writer = try ArchiveWriter(sink: sink, options: options, startsArchive: coordinator)
            var results = try write(plan, planner: planner, prefix: share.prefix, into: writer)
            let record = try sink.finish(writer.finishSegment()).encoded()
            results.append(WriteResult(index: MetadataIndex(fqn: UploadShare.recordName), sizeInBytes: 0,
                                       storageData: StorageInfo(relativePath: "", offset: 0, length: 0), writerRecord: record))
            return results
        }
        var partOptions = options
        partOptions.sync = false   // a staging part: joined into the archive (which is synced) and removed
        let part = try ArchiveWriter(path: partPath(rank), options: partOptions)
        let results = try write(plan, planner: planner, prefix: plan.storageData ?? CheckpointFiles.prefix(rank: rank), into: part)
        try part.finish()
        return results
    }

    /// Writes the plan's items as the rank's data file, every item starting a frame.
    private func write(_ plan: SavePlan, planner: SavePlanner, prefix: String, into part: ArchiveWriter) throws -> [WriteResult] {
        let name = CheckpointFiles.dataFile(prefix: prefix)
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
        return results
    }

    public func finalizeCheckpoint(metadata: Metadata, results: [[WriteResult]]) throws {
        var metadata = metadata
        metadata.storageData = storageData(results)
        if let object, let share {
            // The ranks' segment records: the coordinator's first, then the others in rank order.
            let order = [rank] + results.indices.filter { $0 != rank }
            let segments = try order.flatMap { r in
                try results[r].compactMap(\.writerRecord).map { try SharedUpload.Segment(decoding: $0) }
            }
            try SharedUpload.complete(object, uploadID: share.uploadID, segments: segments,
                                      files: [(CheckpointFiles.metadataName, try MetadataCoding.encode(metadata))], options: options)
            self.share = nil
            return
        }
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
        if let object {
            if let share { SharedUpload.abort(object, uploadID: share.uploadID) }
            share = nil
            return
        }
        unlink(partPath(rank))
        // Every rank has finished writing when an abort is decided, so the
        // coordinator can also sweep parts of ranks that died.
        if coordinator { for rank in 0..<worldSize { unlink(partPath(rank)) } }
    }
}

/// A rank's share of an S3 upload, as it travels in its plan's `storageData`.
struct UploadShare {
    var prefix: String
    var uploadID: String
    var parts: ClosedRange<Int>
    var partSize: Int

    /// The write result that carries a rank's segment record (never in the metadata).
    static let recordName = "__checkpack_segment__"

    var encoded: String { [prefix, uploadID, String(parts.lowerBound), String(parts.upperBound), String(partSize)].joined(separator: "\u{1F}") }

    init(prefix: String, uploadID: String, parts: ClosedRange<Int>, partSize: Int) {
        (self.prefix, self.uploadID, self.parts, self.partSize) = (prefix, uploadID, parts, partSize)
    }

    init?(encoded: String) {
        let fields = encoded.split(separator: "\u{1F}", omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 5, let first = Int(fields[2]), let last = Int(fields[3]), first <= last, let size = Int(fields[4]) else { return nil }
        self.init(prefix: fields[0], uploadID: fields[1], parts: first...last, partSize: size)
    }
}

extension WriteItem {
    /// About how many bytes the item takes in a data file (for sizing an upload's parts).
    var plannedBytes: UInt64 {
        guard let data = tensorData else { return 64 << 10 }
        return UInt64(data.chunk.sizes.reduce(1, *) * data.properties.dtype.elementSize)
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
    /// The archive once a load opened it.
    public private(set) var archive: ArchiveReader?
    private var metadata = Metadata(stateDictMetadata: [:])
    private let open: (String) throws -> any ArchiveSource

    /// `open` turns the checkpoint id into a source (default: a local file).
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
