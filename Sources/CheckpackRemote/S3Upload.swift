import Checkpack
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Cuts a byte stream into parts of `size` bytes: each part that fills is
/// handed on; the bytes after the last full part wait in `rest`.
struct PartCutter {
    let size: Int
    private(set) var rest: [UInt8] = []

    init(size: Int) {
        self.size = size
        rest.reserveCapacity(size)
    }

    mutating func append(_ bytes: UnsafeRawBufferPointer, full: ([UInt8]) throws -> Void) rethrows {
        var bytes = bytes[...]
        while !bytes.isEmpty {
            let n = min(bytes.count, size - rest.count)
            rest.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes.prefix(n)))
            bytes = bytes.dropFirst(n)
            if rest.count == size {
                let part = rest
                rest = []
                rest.reserveCapacity(size)
                try full(part)
            }
        }
    }

    /// The bytes after the last full part, which no longer wait here.
    mutating func takeRest() -> [UInt8] {
        defer { rest = [] }
        return rest
    }
}

/// One S3 multipart upload: created once, parts sent on threads of their
/// own (a few at once), then completed or aborted. Every part carries its
/// CRC32C (`x-amz-checksum-crc32c`), which S3 checks. Shared by the sinks
/// that fill an upload: one writer's (`S3MultipartSink`) or one rank's share
/// of an upload that several ranks fill (`S3SegmentSink`).
final class S3Upload: @unchecked Sendable {
    let object: S3Object
    private let state: Locked<State>
    private let slots: DispatchSemaphore
    private let group = DispatchGroup()
    private var interruptToken: Int? = nil

    struct Part: Sendable {
        var number: Int
        var etag: String
        /// The part's CRC32C, big-endian, in base64 (as S3's checksum headers carry it).
        var checksum: String
    }

    private struct State {
        var uploadID: String? = nil
        /// CreateMultipartUpload failed: there is nothing to abort.
        var creationFailed = false
        var parts: [Part] = []
        var failure: (any Error)? = nil
    }

    /// An upload of `object`, created by the first part sent, or the one
    /// `uploadID` names (created by another process). Either way a signal
    /// that interrupts this process aborts it.
    init(object: S3Object, uploadID: String? = nil) {
        self.object = object
        state = Locked(State(uploadID: uploadID))
        slots = DispatchSemaphore(value: max(1, object.client.options.concurrency))
        if uploadID != nil { registerAbortOnSignal() }
    }

    deinit { unregister() }

    /// The upload's id, creating the upload first if need be.
    func id() throws -> String {
        if let id = state.withLock({ $0.uploadID }) { return id }
        // Registered before the request: a signal that comes while it is answered
        // still aborts the upload it creates, once its id is known.
        registerAbortOnSignal()
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

    /// Sends `part` as part `number` on a thread of its own, once one of the
    /// few slots is free; a failure is thrown by a later call.
    func send(_ part: [UInt8], number: Int) throws {
        guard (1...S3MultipartSink.maximumParts).contains(number) else {
            throw CheckpackError(.limitExceeded, "part number \(number) is outside S3's 1...\(S3MultipartSink.maximumParts)")
        }
        let uploadID = try id()
        slots.wait()
        do { try checkFailure() } catch {
            slots.signal()
            throw error
        }
        group.enter()
        let object = self.object
        runOnNewThread { [self] in
            defer {
                slots.signal()
                group.leave()
            }
            do {
                let checksum = S3Upload.crc32cBase64(part)
                let response = try object.client.perform(object.request(
                    "PUT", query: "partNumber=\(number)&uploadId=\(S3Configuration.encodeQueryValue(uploadID))",
                    headers: ["x-amz-checksum-crc32c: \(checksum)"], body: part))
                guard let etag = response.header("etag") else {
                    throw CheckpackError(.remote(status: response.status), "part \(number) was accepted without an ETag")
                }
                state.withLock { $0.parts.append(Part(number: number, etag: etag, checksum: checksum)) }
            } catch {
                state.withLock { if $0.failure == nil { $0.failure = error } }
            }
        }
    }

    /// Waits for every part sent so far; throws the first failure.
    func waitForParts() throws -> [Part] {
        group.wait()
        try checkFailure()
        return state.withLock { $0.parts }
    }

    func checkFailure() throws {
        if let failure = state.withLock({ $0.failure }) { throw failure }
    }

    /// Completes the upload from `parts` (any order): the object appears now.
    func complete(_ parts: [Part]) throws {
        let id = try self.id()
        var xml = "<CompleteMultipartUpload>"
        for part in parts.sorted(by: { $0.number < $1.number }) {
            xml += "<Part><PartNumber>\(part.number)</PartNumber><ETag>\(XMLText.escape(part.etag))</ETag><ChecksumCRC32C>\(part.checksum)</ChecksumCRC32C></Part>"
        }
        xml += "</CompleteMultipartUpload>"
        let response = try object.client.perform(object.request("POST", query: "uploadId=\(S3Configuration.encodeQueryValue(id))",
                                                                body: Array(xml.utf8)))
        // S3 may answer 200 and still fail: the error is then in the body.
        if let error = response.s3Error {
            throw CheckpackError(.remote(status: response.status), "CompleteMultipartUpload failed: \(error.code) (\(error.message))")
        }
        unregister()
    }

    /// Waits for the parts in flight, then aborts the upload (if it was created), so no part stays stored.
    func abort() {
        group.wait()
        unregister()
        if let id = state.withLock({ $0.uploadID }) { S3Upload.abort(object, id) }
    }

    private func registerAbortOnSignal() {
        guard interruptToken == nil else { return }
        let object = self.object, state = self.state
        interruptToken = Interruption.register { S3Upload.abortOnceKnown(object, state) }
    }

    /// Stops aborting the upload on a signal (it is complete, or another process owns it).
    func unregister() {
        if let token = interruptToken { Interruption.unregister(token) }
        interruptToken = nil
    }

    /// For a signal: aborts the upload, waiting a little for CreateMultipartUpload's answer if it is still coming.
    private static func abortOnceKnown(_ object: S3Object, _ state: Locked<State>) {
        for _ in 0..<200 {
            let (id, failed) = state.withLock { ($0.uploadID, $0.creationFailed) }
            if let id { return abort(object, id) }
            if failed { return }
            usleep(50_000)
        }
    }

    /// Best effort: a failure here leaves a pending upload, which the message names.
    static func abort(_ object: S3Object, _ id: String) {
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
