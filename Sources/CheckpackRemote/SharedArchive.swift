import Checkpack

/// One archive that several ranks save into, wherever it goes
/// (spec/CHECKPOINT.md section 5): a local file (`SharedFile`) or an S3
/// object (`SharedUpload`). The one place that picks between them, for the
/// storage backend and the C ABI alike. `id` is what `create` returned: the
/// temporary file's path, or the upload's id.
package enum SharedArchive {
    case file(String)
    case object(S3Object)

    /// The archive at `location`; S3 settings from `environment` (nil: this process's).
    package init(_ location: ArchiveLocation, environment: [String: String]? = nil) throws {
        if case .file(let path) = location { self = .file(path) } else { self = .object(try location.s3Object(environment: environment)) }
    }

    /// Starts the archive (the coordinator); returns its id.
    package func create() throws -> String {
        switch self {
        case .file(let path): return try SharedFile.create(beside: path, overwrite: true)
        case .object(let object): return try SharedUpload.create(object)
        }
    }

    /// Removes what `create` started (any rank may).
    package func abort(_ id: String) {
        switch self {
        case .file: SharedFile.abort(id)
        case .object(let object): SharedUpload.abort(object, uploadID: id)
        }
    }

    /// A rank's share: part numbers `parts` of `partSize` bytes; `holdsFirst` for the coordinator.
    package func segmentSink(_ id: String, parts: ClosedRange<Int>, partSize: Int, holdsFirst: Bool) throws -> any SegmentSink {
        switch self {
        case .file: return try FileRegionSink(temporary: id, region: SharedFile.region(parts: parts, partSize: partSize))
        case .object(let object): return try S3SegmentSink(object: object, uploadID: id, parts: parts, partSize: partSize, holdsFirst: holdsFirst)
        }
    }

    /// The coordinator's last step: the ranks' records (its own first), then `files`, complete the archive.
    package func complete(_ id: String, records: [[UInt8]], files: [(name: String, bytes: [UInt8])], options: WriterOptions) throws {
        switch self {
        case .file(let path):
            try SharedFile.complete(temporary: id, path: path, overwrite: true, segments: records.map(SharedFile.Segment.init(decoding:)),
                                    files: files, options: options)
        case .object(let object):
            try SharedUpload.complete(object, uploadID: id, segments: records.map(SharedUpload.Segment.init(decoding:)),
                                      files: files, options: options)
        }
    }
}
