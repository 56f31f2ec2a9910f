import Checkpack

/// An archive read with ranged GETs from an HTTP(S) server or S3.
///
/// Opening costs one request: a GET of the object's last `tailSize` bytes,
/// which also gives its size and ETag; reads inside that tail are served
/// from memory. Every later request carries `If-Match` with that ETag, so an
/// object replaced while it is read is an error, never a mix of two versions.
/// Range reads of many frames are merged into few GETs, several in flight
/// (`RemoteOptions.concurrency`), each decoded as it arrives.
public final class RemoteSource: ArchiveSource, @unchecked Sendable {
    /// The URL, with any signature redacted: for messages.
    public let name: String
    /// The object's size, from the answer to the first request.
    public let size: UInt64
    /// The entity tag the object had when it was opened (nil if the server sends none).
    public let etag: String?
    /// Few large requests, several in flight (`ReadPlan.remote`).
    public let readPlan: ReadPlan
    private let url: String
    private let signing: AWSSigning?
    private let client: HTTPClient
    /// The object's last bytes, read at open.
    private let tail: [UInt8]
    private let tailOffset: UInt64

    /// An archive at an `http://` or `https://` URL.
    public convenience init(url: String, options: RemoteOptions = RemoteOptions()) throws {
        try self.init(name: url, url: url, signing: nil, client: HTTPClient(options: options))
    }

    /// An archive stored as an S3 object.
    public convenience init(object: S3Object) throws {
        try self.init(name: object.name, url: object.configuration.url(bucket: object.bucket, key: object.key),
                      signing: object.configuration.signing, client: object.client)
    }

    init(name: String, url: String, signing: AWSSigning?, client: HTTPClient) throws {
        self.name = name
        self.url = url
        self.signing = signing
        self.client = client
        let options = client.options
        readPlan = ReadPlan(mergeGap: options.mergeGap, maxReadSize: options.maxRequestSize, concurrency: options.concurrency,
                            readsHeaderAtOpen: false)
        let response: HTTPResponse
        do {
            let request = HTTPRequest(method: "GET", url: url, headers: ["Range: bytes=-\(max(options.tailSize, 1))"], signing: signing)
            // 416: an empty object has no last bytes.
            response = try client.perform(request, body: .collect(limit: Int(clamping: options.tailSize)),
                                          accept: { $0 == 200 || $0 == 206 || $0 == 416 })
        } catch {
            throw error.checkpackContext(path: name)
        }
        etag = response.header("etag")
        switch response.status {
        case 206:
            guard let range = response.header("content-range").flatMap(ContentRange.init),
                  range.end - range.start + 1 == UInt64(response.body.count), range.end + 1 == range.total else {
                throw CheckpackError(.remote(status: 206), "the answer to a GET of the last bytes has a Content-Range that does not match its body (\(response.header("content-range") ?? "none"))", path: name)
            }
            size = range.total
            tailOffset = range.start
        case 200:   // the whole object (a server that ignores Range, with an object smaller than the tail)
            size = UInt64(response.body.count)
            tailOffset = 0
        default:
            size = 0
            tailOffset = 0
        }
        tail = response.status == 416 ? [] : response.body
    }

    /// Fills `buffer` from `offset`: from the tail read at open when it holds the range, else with one ranged GET that must match the ETag seen at open.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard offset <= size, UInt64(buffer.count) <= size - offset else {
            throw CheckpackError(.truncated, "read past the end of the object (\(size) bytes)", path: name, offset: offset)
        }
        if buffer.isEmpty { return }
        if offset >= tailOffset {
            tail.withUnsafeBytes { tail in
                let start = Int(offset - tailOffset)
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: tail[start..<start + buffer.count]))
            }
            return
        }
        let last = offset + UInt64(buffer.count) - 1
        var headers = ["Range: bytes=\(offset)-\(last)"]
        if let etag { headers.append("If-Match: \(etag)") }
        do {
            let response = try client.perform(HTTPRequest(method: "GET", url: url, headers: headers, signing: signing),
                                               body: .into(buffer), accept: { $0 == 206 || $0 == 200 })
            // A 200 is the whole object: only right when that is what was asked for.
            let range = response.status == 206 ? response.header("content-range").flatMap(ContentRange.init) : ContentRange(start: 0, end: size - 1, total: size)
            guard let range, range.start == offset, range.end == last, range.total == size else {
                throw CheckpackError(.remote(status: response.status), "the server answered a GET of bytes \(offset)-\(last) with \(response.header("content-range") ?? "the whole object")", path: name)
            }
        } catch let error as CheckpackError where error.kind == .remote(status: 412) {
            throw CheckpackError(.remote(status: 412), "the object changed since it was opened (its ETag is no longer \(etag ?? ""))", path: name, offset: offset)
        } catch {
            throw error.checkpackContext(path: name)
        }
    }
}

/// `Content-Range: bytes START-END/TOTAL`, every number checked.
struct ContentRange: Equatable {
    var start: UInt64
    var end: UInt64
    var total: UInt64

    init(start: UInt64, end: UInt64, total: UInt64) {
        self.start = start
        self.end = end
        self.total = total
    }

    init?(_ header: String) {
        guard header.hasPrefix("bytes ") else { return nil }
        let parts = header.dropFirst(6).split(separator: "/", maxSplits: 1)
        guard parts.count == 2, let total = UInt64(parts[1]) else { return nil }
        let bounds = parts[0].split(separator: "-", maxSplits: 1)
        guard bounds.count == 2, let start = UInt64(bounds[0]), let end = UInt64(bounds[1]), start <= end, end < total else { return nil }
        self.init(start: start, end: end, total: total)
    }
}
