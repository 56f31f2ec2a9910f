import Checkpack
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Writes an archive as one S3 object, streamed as a multipart upload.
///
/// Parts of `partSize` bytes go up as the archive is written, up to
/// `RemoteOptions.concurrency` of them at once; memory stays at a few parts
/// whatever the archive's size. The first part is held back until `commit`,
/// which rewrites the file header in it, then sends it and the last part and
/// completes the upload: nothing is visible under the key before that. An
/// archive of one part is sent with a single PUT. Every part carries its
/// CRC32C (`x-amz-checksum-crc32c`), which S3 checks. On failure, `abort`
/// or an interrupting signal, the upload is aborted, leaving no parts behind.
public final class S3MultipartSink: ArchiveSink, @unchecked Sendable {
    /// The object the upload makes.
    public let object: S3Object
    /// `s3://bucket/key`, for messages.
    public var name: String { object.name }
    /// Bytes per part: at least S3's minimum of 5 MiB (all parts but the last).
    public let partSize: Int
    /// 16 MiB: archives up to about 150 GiB fit S3's 10,000 parts.
    public static let defaultPartSize = 16 << 20
    /// S3's minimum for every part but the last: 5 MiB.
    public static let minimumPartSize = 5 << 20
    /// S3's maximum part size: 5 GiB.
    public static let maximumPartSize = 5 << 30
    /// S3's maximum number of parts in one upload.
    public static let maximumParts = 10_000

    /// A part size that lets about `bytes` (plus room to spare) fit S3's
    /// 10,000 parts: `atLeast`, or more in whole MiB.
    public static func partSize(forAbout bytes: UInt64, atLeast: Int) -> Int {
        let needed = bytes / 9_000 + 1
        let rounded = ((needed + (1 << 20) - 1) >> 20) << 20
        return Int(clamping: min(max(UInt64(atLeast), rounded), UInt64(maximumPartSize)))
    }

    private var first: [UInt8]? = nil
    private var cutter: PartCutter
    private var nextPart = 2
    private let upload: S3Upload
    private var done = false

    /// An upload to `object` in parts of `partSize` bytes (5 MiB to 5 GiB); nothing is sent before the first part fills.
    public init(object: S3Object, partSize: Int = S3MultipartSink.defaultPartSize) throws {
        guard partSize >= S3MultipartSink.minimumPartSize, partSize <= S3MultipartSink.maximumPartSize else {
            throw CheckpackError(.invalidArgument, "part size \(partSize) is outside S3's limits (5 MiB to 5 GiB)")
        }
        self.object = object
        self.partSize = partSize
        upload = S3Upload(object: object)
        cutter = PartCutter(size: partSize)
    }

    deinit { abort() }

    /// Appends `bytes`; each part that fills is sent on a thread of its own (a few at once).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try upload.checkFailure()
        try cutter.append(bytes) { part in
            if first == nil {
                first = part   // sent last: its header is rewritten on commit
            } else {
                try send(part, number: nextPart)
                nextPart += 1
            }
        }
    }

    /// Rewrites the archive's first bytes with `header`, sends what is left and completes the upload: only now does the object appear.
    public func commit(header: [UInt8]) throws {
        do {
            try upload.checkFailure()
            if var first {
                first.replaceSubrange(0..<header.count, with: header)
                try send(first, number: 1)
                let rest = cutter.takeRest()
                if !rest.isEmpty { try send(rest, number: nextPart) }
                try upload.complete(upload.waitForParts())
            } else {
                var whole = cutter.takeRest()
                whole.replaceSubrange(0..<min(header.count, whole.count), with: header.prefix(whole.count))
                try putWhole(whole)
            }
            done = true
        } catch {
            abort()
            throw error.checkpackContext(path: name)
        }
    }

    /// Aborts the upload, so that no part stays stored; safe to call more than once.
    public func abort() {
        guard !done else { return }
        done = true
        upload.abort()
    }

    private func send(_ part: [UInt8], number: Int) throws {
        guard number <= S3MultipartSink.maximumParts else {
            throw CheckpackError(.limitExceeded, "the archive needs more than S3's \(S3MultipartSink.maximumParts) parts of \(partSize) bytes: choose a larger part size")
        }
        try upload.send(part, number: number)
    }

    private func putWhole(_ bytes: [UInt8]) throws {
        _ = try object.client.perform(object.request("PUT", headers: ["x-amz-checksum-crc32c: \(S3Upload.crc32cBase64(bytes))"], body: bytes))
    }
}
