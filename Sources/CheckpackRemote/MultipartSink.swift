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
    private var current: [UInt8] = []
    private var nextPart = 2
    private let state = Locked(UploadState())
    private let slots: DispatchSemaphore
    private let group = DispatchGroup()
    private var interruptToken: Int? = nil
    private var done = false

    private struct UploadState {
        var uploadID: String? = nil
        /// CreateMultipartUpload failed: there is nothing to abort.
        var creationFailed = false
        /// (part number, ETag, CRC32C in base64) of every part sent.
        var parts: [(number: Int, etag: String, checksum: String)] = []
        var failure: (any Error)? = nil
    }

    /// An upload to `object` in parts of `partSize` bytes (5 MiB to 5 GiB); nothing is sent before the first part fills.
    public init(object: S3Object, partSize: Int = S3MultipartSink.defaultPartSize) throws {
        guard partSize >= S3MultipartSink.minimumPartSize, partSize <= S3MultipartSink.maximumPartSize else {
            throw CheckpackError(.invalidArgument, "part size \(partSize) is outside S3's limits (5 MiB to 5 GiB)")
        }
        self.object = object
        self.partSize = partSize
        slots = DispatchSemaphore(value: max(1, object.client.options.concurrency))
        current.reserveCapacity(partSize)
    }

    deinit { abort() }

    /// Appends `bytes`; each part that fills is sent on a thread of its own (a few at once).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try checkFailure()
        var rest = bytes[...]
        while !rest.isEmpty {
            let n = min(rest.count, partSize - current.count)
            current.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest.prefix(n)))
            rest = rest.dropFirst(n)
            if current.count == partSize {
                let part = current
                current = []
                current.reserveCapacity(partSize)
                if first == nil {
                    first = part   // sent last: its header is rewritten on commit
                } else {
                    try send(part, number: nextPart)
                    nextPart += 1
                }
            }
        }
    }

    /// Rewrites the archive's first bytes with `header`, sends what is left and completes the upload: only now does the object appear.
    public func commit(header: [UInt8]) throws {
        do {
            try checkFailure()
            if var first {
                first.replaceSubrange(0..<header.count, with: header)
                try send(first, number: 1)
                if !current.isEmpty { try send(current, number: nextPart) }
                group.wait()
                try checkFailure()
                try complete()
            } else {
                current.replaceSubrange(0..<min(header.count, current.count), with: header.prefix(current.count))
                try putWhole(current)
            }
            done = true
            unregister()
        } catch {
            abort()
            throw error.checkpackContext(path: name)
        }
    }

    /// Aborts the upload, so that no part stays stored; safe to call more than once.
    public func abort() {
        guard !done else { return }
        done = true
        group.wait()
        unregister()
        if let uploadID = state.withLock({ $0.uploadID }) {
            S3MultipartSink.abortUpload(object, uploadID)
        }
    }

    // MARK: Requests

    private func checkFailure() throws {
        if let failure = state.withLock({ $0.failure }) { throw failure }
    }

    /// Starts the upload (once), then sends a part on a thread of its own.
    private func send(_ part: [UInt8], number: Int) throws {
        guard number <= S3MultipartSink.maximumParts else {
            throw CheckpackError(.limitExceeded, "the archive needs more than S3's \(S3MultipartSink.maximumParts) parts of \(partSize) bytes: choose a larger part size")
        }
        let uploadID = try startUpload()
        slots.wait()
        try checkFailure()
        group.enter()
        let object = self.object
        runOnNewThread { [self] in
            defer {
                slots.signal()
                group.leave()
            }
            do {
                let checksum = S3MultipartSink.crc32cBase64(part)
                let response = try object.client.perform(object.request(
                    "PUT", query: "partNumber=\(number)&uploadId=\(S3Configuration.encodeQueryValue(uploadID))",
                    headers: ["x-amz-checksum-crc32c: \(checksum)"], body: part))
                guard let etag = response.header("etag") else {
                    throw CheckpackError(.remote(status: response.status), "part \(number) was accepted without an ETag")
                }
                state.withLock { $0.parts.append((number, etag, checksum)) }
            } catch {
                state.withLock { if $0.failure == nil { $0.failure = error } }
            }
        }
    }

    private func startUpload() throws -> String {
        if let id = state.withLock({ $0.uploadID }) { return id }
        // Registered before the request: a signal that comes while it is answered
        // still aborts the upload it creates, once its id is known.
        let object = self.object, state = self.state
        interruptToken = Interruption.register { S3MultipartSink.abortOnceKnown(object, state) }
        do {
            let response = try object.client.perform(object.request("POST", query: "uploads=", headers: ["x-amz-checksum-algorithm: CRC32C"]))
            guard let id = XMLText.first("UploadId", in: String(decoding: response.body, as: UTF8.self)), !id.isEmpty else {
                throw CheckpackError(.remote(status: response.status), "CreateMultipartUpload answered without an UploadId")
            }
            state.withLock { $0.uploadID = id }
            return id
        } catch {
            state.withLock { $0.creationFailed = true }
            throw error
        }
    }

    /// For a signal: aborts the upload, waiting a little for CreateMultipartUpload's answer if it is still coming.
    private static func abortOnceKnown(_ object: S3Object, _ state: Locked<UploadState>) {
        for _ in 0..<200 {
            let (id, failed) = state.withLock { ($0.uploadID, $0.creationFailed) }
            if let id { return abortUpload(object, id) }
            if failed { return }
            usleep(50_000)
        }
    }

    private func complete() throws {
        let (id, parts) = state.withLock { ($0.uploadID ?? "", $0.parts.sorted { $0.number < $1.number }) }
        var xml = "<CompleteMultipartUpload>"
        for part in parts {
            xml += "<Part><PartNumber>\(part.number)</PartNumber><ETag>\(XMLText.escape(part.etag))</ETag><ChecksumCRC32C>\(part.checksum)</ChecksumCRC32C></Part>"
        }
        xml += "</CompleteMultipartUpload>"
        let response = try object.client.perform(object.request("POST", query: "uploadId=\(S3Configuration.encodeQueryValue(id))",
                                                                body: Array(xml.utf8)))
        // S3 may answer 200 and still fail: the error is then in the body.
        if let error = response.s3Error {
            throw CheckpackError(.remote(status: response.status), "CompleteMultipartUpload failed: \(error.code) (\(error.message))")
        }
    }

    private func putWhole(_ bytes: [UInt8]) throws {
        _ = try object.client.perform(object.request("PUT", headers: ["x-amz-checksum-crc32c: \(S3MultipartSink.crc32cBase64(bytes))"], body: bytes))
    }

    private func unregister() {
        if let token = interruptToken { Interruption.unregister(token) }
        interruptToken = nil
    }

    /// Best effort: a failure here leaves a pending upload, which the message names.
    static func abortUpload(_ object: S3Object, _ id: String) {
        do {
            _ = try object.client.perform(object.request("DELETE", query: "uploadId=\(S3Configuration.encodeQueryValue(id))"),
                                          accept: { $0 == 204 || $0 == 200 || $0 == 404 })
        } catch {
            warn("checkpack: warning: could not abort the multipart upload \(id) of \(object.name): \(error)")
        }
    }

    /// The big-endian CRC32C of `bytes` in base64, as S3's checksum headers carry it.
    static func crc32cBase64(_ bytes: [UInt8]) -> String {
        let crc = CRC32C.checksum(bytes)
        return Base64.encode([UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)])
    }
}
