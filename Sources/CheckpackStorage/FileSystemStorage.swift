import Checkpack
#if canImport(Glibc)
import Glibc
#endif

/// Saves a checkpoint as a directory: one data file per rank
/// (`__{rank}_0.distcp`, items appended back to back, each at the offset its
/// `StorageInfo` gives) and a `.metadata` file, written last. Every file is
/// written under a temporary name, fsynced and renamed into place (`FileSink`),
/// so a file of the checkpoint is either whole or absent.
public final class FileSystemStorageWriter: StorageWriter {
    private var directory = ""
    private var rank = 0
    /// The data file being written, until it is in place.
    private var pending: FileSink?

    /// A backend; the checkpoint id names the directory.
    public init() {}

    public func initializeWriter(checkpointID: String) throws { directory = checkpointID }

    public func configureWriter(isCoordinator: Bool, rank: Int, worldSize: Int) throws {
        self.rank = rank
        if mkdir(directory, 0o777) != 0 && errno != EEXIST {
            throw CheckpackError.system("cannot create directory", path: directory)
        }
    }

    public func optimizeGlobalPlan(_ plans: [SavePlan]) throws -> [SavePlan] {
        CheckpointFiles.assignPrefixes(plans)
    }

    public func executeWrite(plan: SavePlan, planner: SavePlanner) throws -> [WriteResult] {
        let name = CheckpointFiles.dataFile(prefix: plan.storageData ?? CheckpointFiles.prefix(rank: rank))
        let file = try FileSink(path: directory + "/" + name, overwrite: true)
        pending = file
        var offset: UInt64 = 0
        var results: [WriteResult] = []
        for item in plan.items {
            let bytes = try planner.resolveData(item)
            try bytes.withUnsafeBytes { try file.write($0) }
            results.append(WriteResult(index: item.index, sizeInBytes: UInt64(bytes.count),
                                       storageData: StorageInfo(relativePath: name, offset: offset, length: UInt64(bytes.count))))
            offset += UInt64(bytes.count)
        }
        try file.commit()
        pending = nil
        return results
    }

    public func finalizeCheckpoint(metadata: Metadata, results: [[WriteResult]]) throws {
        var metadata = metadata
        metadata.storageData = storageData(results)
        let bytes = try MetadataCoding.encode(metadata)
        let file = try FileSink(path: directory + "/" + CheckpointFiles.metadataName, overwrite: true)
        try bytes.withUnsafeBytes { try file.write($0) }
        try file.commit()
    }

    public func abort() {
        pending?.abort()
        pending = nil
    }
}

/// Every result's storage, keyed by its item's index.
func storageData(_ results: [[WriteResult]]) -> [MetadataIndex: StorageInfo] {
    var storage: [MetadataIndex: StorageInfo] = [:]
    for result in results.joined() where result.writerRecord == nil { storage[result.index] = result.storageData }
    return storage
}

/// Loads a checkpoint from a directory that `FileSystemStorageWriter` wrote
/// (or that `checkpack unpack` made from an archive).
public final class FileSystemStorageReader: StorageReader, StorageByteSource {
    private var directory = ""
    private var metadata = Metadata(stateDictMetadata: [:])
    private var files: [String: SystemFile] = [:]

    /// A backend; the checkpoint id names the directory.
    public init() {}

    public func initializeReader(checkpointID: String) throws { directory = checkpointID }

    public func loadMetadata() throws -> Metadata {
        let path = directory + "/" + CheckpointFiles.metadataName
        let file: SystemFile
        let size: UInt64
        file = try SystemFile.openForReading(path)
        size = try file.size
        guard size <= 1 << 30 else { throw CheckpackError(.limitExceeded, "\(size) bytes is too large for metadata", path: path) }
        return try MetadataCoding.decode(try file.read(count: Int(size), at: 0), source: path)
    }

    public func configureReader(metadata: Metadata, isCoordinator: Bool, rank: Int, worldSize: Int) throws {
        self.metadata = metadata
    }

    public func executeRead(plan: LoadPlan, planner: LoadPlanner) throws {
        try execute(plan: plan, metadata: metadata, planner: planner)
    }

    func read(_ info: StorageInfo, offset: UInt64, count: Int) throws -> [UInt8] {
        try EntryName.validate(info.relativePath)   // no way out of the checkpoint directory
        let file = try files[info.relativePath] ?? SystemFile.openForReading(directory + "/" + info.relativePath)
        files[info.relativePath] = file
        guard offset + UInt64(count) <= info.length, info.offset + info.length <= (try file.size) else {
            throw CheckpackError(.truncated, "is too short for bytes \(info.offset)+\(info.length)", path: file.path)
        }
        return try file.read(count: count, at: info.offset + offset)
    }
}
