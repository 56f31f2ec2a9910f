import Checkpack
import CheckpackRemote
#if canImport(Glibc)
import Glibc
#endif

/// Saves a checkpoint straight into one archive, from every rank at once,
/// with nothing staged or copied (spec/CHECKPOINT.md section 5). The
/// coordinator starts the archive in `optimizeGlobalPlan` and gives each rank
/// a range of part numbers; each rank writes its items into its share as a
/// *segment*, one logical file `__{rank}_0.distcp` with every item starting a
/// new frame (tensor items in byte planes, by their dtype), and returns a
/// record; the coordinator's `finalizeCheckpoint` adds `.metadata` and
/// completes the archive. A failure on any rank removes what was started.
///
/// - A local path: the archive is a temporary file beside it in which each
///   rank has its own region (`SharedFile`); the coordinator closes the gaps
///   between the segments, fsyncs and renames it into place.
/// - An `s3://bucket/key` id (S3 settings from the AWS_* environment): one
///   multipart upload in which each rank has its own part numbers (`SharedUpload`).
public final class ArchiveStorageWriter: StorageWriter {
    /// The compression every rank's data uses.
    public let options: WriterOptions
    private var path = ""
    private var rank = 0
    private var coordinator = false
    /// Where the archive goes: a local file or an S3 object.
    private var archive: SharedArchive?
    /// This rank's share of the archive, once planned.
    private var share: UploadShare?

    private let environment: [String: String]?

    /// `options` apply to every rank's data (codec, level, frame size, threads);
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
        archive = try SharedArchive(ArchiveLocation(checkpointID), environment: environment)
    }

    public func configureWriter(isCoordinator: Bool, rank: Int, worldSize: Int) throws {
        self.rank = rank
        coordinator = isCoordinator
    }

    public func optimizeGlobalPlan(_ plans: [SavePlan]) throws -> [SavePlan] {
        let plans = CheckpointFiles.assignPrefixes(plans)
        let planned = plans.map { $0.items.reduce(UInt64(0)) { $0 + $1.plannedBytes } }
        let (partSize, ranges) = try SharedUpload.plan(plannedBytes: planned, coordinator: rank)
        let id = try opened().create()
        return zip(plans, ranges).map { plan, range in
            var plan = plan
            plan.storageData = UploadShare(prefix: plan.storageData ?? "", uploadID: id, parts: range, partSize: partSize).encoded
            return plan
        }
    }

    public func executeWrite(plan: SavePlan, planner: SavePlanner) throws -> [WriteResult] {
        guard let share = plan.storageData.flatMap(UploadShare.init(encoded:)) else {
            throw CheckpackError(.invalidArgument, "no part numbers were planned for rank \(rank)", path: path)
        }
        self.share = share
        // A failure below releases the writer and its sink, which removes the shared archive.
        let sink = try opened().segmentSink(share.uploadID, parts: share.parts, partSize: share.partSize, holdsFirst: coordinator)
        let writer = try ArchiveWriter(sink: sink, options: options, startsArchive: coordinator)
        var results = try write(plan, planner: planner, prefix: share.prefix, into: writer)
        let record = try sink.record(writer.finishSegment())
        results.append(WriteResult(index: MetadataIndex(fqn: UploadShare.recordName), sizeInBytes: 0,
                                   storageData: StorageInfo(relativePath: "", offset: 0, length: 0), writerRecord: record))
        if !coordinator { self.share = nil }   // the coordinator owns the archive now
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
        guard let share else { throw CheckpackError(.invalidArgument, "the coordinator wrote no share of the archive", path: path) }
        do {
            var metadata = metadata
            metadata.storageData = storageData(results)
            // The ranks' segment records: the coordinator's first, then the others in rank order.
            let order = [rank] + results.indices.filter { $0 != rank }
            let records = order.flatMap { results[$0].compactMap(\.writerRecord) }
            let files = [(name: CheckpointFiles.metadataName, bytes: try MetadataCoding.encode(metadata))]
            try opened().complete(share.uploadID, records: records, files: files, options: options)
        } catch {
            abort()
            throw error
        }
        self.share = nil
    }

    public func abort() {
        guard let share else { return }
        self.share = nil
        archive?.abort(share.uploadID)
    }

    private func opened() throws -> SharedArchive {
        guard let archive else { throw CheckpackError(.invalidArgument, "the archive writer is not initialized") }
        return archive
    }
}

/// A rank's share of the archive (upload id or temporary file, part numbers), as it travels in its plan's `storageData`.
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
