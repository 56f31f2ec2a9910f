import CCurl
import CCurlShims
import Checkpack
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Settings for requests to HTTP(S) and S3 servers.
public struct RemoteOptions: Sendable {
    /// Tries per request, the first included, before giving up.
    public var attempts = 5
    /// Wait before the first retry, in seconds; it doubles with each retry
    /// (up to `maxBackoff`), and each wait is drawn at random below it.
    public var initialBackoff = 0.2
    /// The longest wait between two tries, in seconds.
    public var maxBackoff = 10.0
    /// Seconds to wait for a connection.
    public var connectTimeout = 10
    /// A response that sends nothing for this many seconds is abandoned (and retried).
    public var stallTimeout = 30
    /// Requests in flight at once for one range read or one upload.
    public var concurrency = 8
    /// Frames closer than this share one ranged GET.
    public var mergeGap: UInt64 = 1 << 20
    /// A ranged GET asks for at most this many bytes (a single larger frame excepted).
    public var maxRequestSize: UInt64 = 8 << 20
    /// Bytes the first request of an open asks for, from the end of the object.
    public var tailSize: UInt64 = 64 << 10
    /// PEM file of the certificate authorities to trust instead of the system's.
    public var caBundle: String? = nil

    /// The defaults: 5 tries, 8 requests in flight, the system's CA bundle.
    public init() {}
}

/// A request, as `HTTPClient.perform` sends it.
struct HTTPRequest {
    var method: String
    var url: String
    /// "Name: value" lines.
    var headers: [String] = []
    var body: [UInt8]? = nil
    /// AWS Signature Version 4, computed by libcurl (CURLOPT_AWS_SIGV4).
    var signing: AWSSigning? = nil
}

/// What libcurl needs to sign a request for S3.
struct AWSSigning: Sendable {
    var region: String
    var credentials: AWSCredentials
}

struct HTTPResponse {
    var status: Int
    /// Names in lower case.
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.last { $0.name == name }?.value
    }

    /// The code and message of an S3 error body, if it is one.
    var s3Error: (code: String, message: String)? {
        let text = String(decoding: body.prefix(4096), as: UTF8.self)
        guard let code = XMLText.first("Code", in: text) else { return nil }
        return (code, XMLText.first("Message", in: text) ?? "")
    }
}

/// Where a response body goes.
enum ResponseBody {
    /// Kept in memory, up to this many bytes (more is an error).
    case collect(limit: Int)
    /// Exactly `buffer.count` bytes, written into the buffer; fewer is a body
    /// cut short (retried), more an error.
    case into(UnsafeMutableRawBufferPointer)
}

/// Blocking HTTP(S) requests through libcurl's easy interface, with retries.
/// A pool of easy handles keeps connections alive between requests; each
/// thread uses its own handle for the length of a request, so many threads
/// may send requests at once.
final class HTTPClient: @unchecked Sendable {
    let options: RemoteOptions
    private let handles = Locked<[UnsafeMutableRawPointer]>([])

    private static let globalInit: Bool = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK

    init(options: RemoteOptions) throws {
        guard HTTPClient.globalInit else { throw CheckpackError(.io(EIO), "libcurl failed to initialize") }
        self.options = options
    }

    deinit {
        for handle in handles.withLock({ $0 }) { curl_easy_cleanup(handle) }
    }

    /// Sends `request` until it succeeds (2xx, or a status `accept` allows),
    /// retrying transient failures: connection errors and timeouts, 429 and
    /// 5xx answers, and bodies cut short. Then one error naming the request,
    /// the status and the S3 error code.
    func perform(_ request: HTTPRequest, body: ResponseBody = .collect(limit: 1 << 20),
                 accept: (Int) -> Bool = { (200..<300).contains($0) }) throws -> HTTPResponse {
        var attempt = 1
        var backoff = options.initialBackoff
        while true {
            let outcome = try send(request, body: body)
            let failure: RequestFailure
            switch outcome {
            case .response(let response) where accept(response.status):
                return response
            case .response(let response):
                failure = .status(response)
            case .transport(let failed):
                failure = failed
            }
            guard failure.isTransient, attempt < options.attempts else {
                throw failure.error(request, attempts: attempt)
            }
            attempt += 1
            usleep(useconds_t(Double.random(in: 0...backoff) * 1_000_000))
            backoff = min(backoff * 2, options.maxBackoff)
        }
    }

    private enum Outcome {
        case response(HTTPResponse)
        case transport(RequestFailure)
    }

    /// One try of a request.
    private func send(_ request: HTTPRequest, body: ResponseBody) throws -> Outcome {
        let handle = try takeHandle()
        defer { returnHandle(handle) }
        let transfer = Transfer(body: body)
        var headerList: UnsafeMutablePointer<curl_slist>? = nil
        defer { curl_slist_free_all(headerList) }
        var lines = request.headers
        if request.body != nil { lines.append("Content-Type: application/octet-stream") }
        // No 100-continue round trip before a body (libcurl then adds no Expect header,
        // which it would otherwise send unsigned; removing it with "Expect:" would
        // put an empty header into the signature).
        if request.body != nil { _ = ckpk_curl_set_long(handle, CURLOPT_EXPECT_100_TIMEOUT_MS, 0) }
        if let signing = request.signing {
            // libcurl signs with the value given here (the body is not hashed a second time).
            lines.append("x-amz-content-sha256: UNSIGNED-PAYLOAD")
            if let token = signing.credentials.sessionToken { lines.append("x-amz-security-token: \(token)") }
        }
        for line in lines { headerList = curl_slist_append(headerList, line) }

        var code = CURLE_OK
        func set(_ result: CURLcode) { if code == CURLE_OK { code = result } }
        set(ckpk_curl_set_pointer(handle, CURLOPT_URL, request.url))
        set(ckpk_curl_set_pointer(handle, CURLOPT_CUSTOMREQUEST, request.method))
        if request.method == "HEAD" { set(ckpk_curl_set_long(handle, CURLOPT_NOBODY, 1)) }
        set(ckpk_curl_set_pointer(handle, CURLOPT_HTTPHEADER, headerList))
        set(ckpk_curl_set_long(handle, CURLOPT_NOSIGNAL, 1))
        set(ckpk_curl_set_long(handle, CURLOPT_CONNECTTIMEOUT, options.connectTimeout))
        set(ckpk_curl_set_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1))
        set(ckpk_curl_set_long(handle, CURLOPT_LOW_SPEED_TIME, options.stallTimeout))
        set(ckpk_curl_set_long(handle, CURLOPT_FOLLOWLOCATION, request.signing == nil ? 1 : 0))
        set(ckpk_curl_set_long(handle, CURLOPT_MAXREDIRS, 5))
        set(ckpk_curl_set_pointer(handle, CURLOPT_PROTOCOLS_STR, "http,https"))
        set(ckpk_curl_set_pointer(handle, CURLOPT_REDIR_PROTOCOLS_STR, "http,https"))
        if let ca = options.caBundle { set(ckpk_curl_set_pointer(handle, CURLOPT_CAINFO, ca)) }
        if let signing = request.signing {
            set(ckpk_curl_set_pointer(handle, CURLOPT_AWS_SIGV4, "aws:amz:\(signing.region):s3"))
            set(ckpk_curl_set_pointer(handle, CURLOPT_USERNAME, signing.credentials.accessKeyID))
            set(ckpk_curl_set_pointer(handle, CURLOPT_PASSWORD, signing.credentials.secretAccessKey))
        }
        let context = Unmanaged.passUnretained(transfer).toOpaque()
        set(ckpk_curl_set_callback(handle, CURLOPT_WRITEFUNCTION, { data, size, count, context in
            Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue().receive(data, size * count)
        }))
        set(ckpk_curl_set_pointer(handle, CURLOPT_WRITEDATA, context))
        set(ckpk_curl_set_callback(handle, CURLOPT_HEADERFUNCTION, { data, size, count, context in
            Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue().header(data, size * count)
        }))
        set(ckpk_curl_set_pointer(handle, CURLOPT_HEADERDATA, context))
        var errorBuffer = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        let result: CURLcode = errorBuffer.withUnsafeMutableBufferPointer { errorText in
            set(ckpk_curl_set_pointer(handle, CURLOPT_ERRORBUFFER, errorText.baseAddress))
            func run() -> CURLcode {
                guard code == CURLE_OK else { return code }
                return curl_easy_perform(handle)
            }
            if let upload = request.body {
                return upload.withUnsafeBytes { bytes in
                    set(ckpk_curl_set_offset(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(bytes.count)))
                    set(ckpk_curl_set_pointer(handle, CURLOPT_POSTFIELDS, bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1)))
                    return run()
                }
            }
            return run()
        }
        if result == CURLE_BAD_FUNCTION_ARGUMENT || result == CURLE_UNKNOWN_OPTION || result == CURLE_NOT_BUILT_IN {
            throw CheckpackError(.io(EINVAL), "\(request.method) \(Redacted.url(request.url)): libcurl refused an option (\(String(cString: curl_easy_strerror(result))))")
        }
        if transfer.overflow {
            return .transport(.overflow(expected: transfer.capacity))
        }
        guard result == CURLE_OK else {
            let detail = String(decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return .transport(.curl(result, detail.isEmpty ? String(cString: curl_easy_strerror(result)) : detail))
        }
        var status = 0
        _ = ckpk_curl_get_long(handle, CURLINFO_RESPONSE_CODE, &status)
        let response = HTTPResponse(status: status, headers: transfer.headers, body: transfer.collected)
        if (200..<300).contains(status), case .into(let buffer) = body, request.method != "HEAD", transfer.received != buffer.count {
            return .transport(.short(expected: buffer.count, received: transfer.received))
        }
        return .response(response)
    }

    private func takeHandle() throws -> UnsafeMutableRawPointer {
        if let handle = handles.withLock({ $0.popLast() }) { return handle }
        guard let handle = curl_easy_init() else { throw CheckpackError(.io(ENOMEM), "libcurl could not make a handle") }
        return handle
    }

    private func returnHandle(_ handle: UnsafeMutableRawPointer) {
        curl_easy_reset(handle)   // keeps its connections and DNS cache
        handles.withLock { $0.append(handle) }
    }
}

/// Why one try of a request failed.
enum RequestFailure {
    case curl(CURLcode, String)
    case status(HTTPResponse)
    case short(expected: Int, received: Int)
    case overflow(expected: Int)

    /// Worth another try: the network or a busy server, not the request.
    var isTransient: Bool {
        switch self {
        case .curl(let code, _):
            return [CURLE_COULDNT_CONNECT, CURLE_OPERATION_TIMEDOUT, CURLE_SEND_ERROR, CURLE_RECV_ERROR,
                    CURLE_PARTIAL_FILE, CURLE_GOT_NOTHING, CURLE_SSL_CONNECT_ERROR, CURLE_HTTP2, CURLE_HTTP2_STREAM].contains(code)
        case .status(let response):
            return response.status == 429 || (500..<600).contains(response.status)
                || response.s3Error?.code == "SlowDown" || response.s3Error?.code == "RequestTimeout"
        case .short:
            return true
        case .overflow:
            return false
        }
    }

    func error(_ request: HTTPRequest, attempts: Int) -> CheckpackError {
        let what = "\(request.method) \(Redacted.url(request.url))"
        let tries = attempts > 1 ? " (after \(attempts) tries)" : ""
        switch self {
        case .curl(_, let detail):
            return CheckpackError(.remote(status: 0), "\(what): \(detail)\(tries)")
        case .short(let expected, let received):
            return CheckpackError(.remote(status: 0), "\(what): body cut short, \(received) of \(expected) bytes\(tries)")
        case .overflow(let expected):
            return CheckpackError(.remote(status: 0), "\(what): the server sent more than the \(expected) bytes asked for")
        case .status(let response):
            var text = "\(what): HTTP \(response.status)"
            if let s3 = response.s3Error {
                text += " \(s3.code)"
                if !s3.message.isEmpty { text += " (\(s3.message))" }
            }
            let kind: CheckpackError.Kind = switch response.status {
            case 404: .notFound
            case 401, 403: .io(EACCES)
            default: .remote(status: response.status)
            }
            return CheckpackError(kind, text + tries)
        }
    }
}

/// Collects one response: its headers, and its body into memory or the caller's buffer.
private final class Transfer {
    var headers: [(name: String, value: String)] = []
    var collected: [UInt8] = []
    let target: UnsafeMutableRawBufferPointer?
    let capacity: Int
    /// Bytes of a successful body received (into `target`, or `collected`).
    var received = 0
    var overflow = false
    /// The status of the response being received, from its status line.
    private var status = 0
    /// An error's body is kept for its message (S3's error code), up to this much, never in `target`.
    static let errorBodyLimit = 64 << 10

    init(body: ResponseBody) {
        switch body {
        case .collect(let limit): target = nil; capacity = limit
        case .into(let buffer): target = buffer; capacity = buffer.count
        }
    }

    func receive(_ data: UnsafeMutablePointer<CChar>?, _ count: Int) -> Int {
        guard let data, count > 0 else { return count }
        let bytes = UnsafeRawBufferPointer(start: data, count: count)
        guard (200..<300).contains(status) else {
            collected.append(contentsOf: bytes.prefix(max(0, Transfer.errorBodyLimit - collected.count)))
            return count
        }
        guard received <= capacity - count else {
            overflow = true
            return 0   // makes libcurl stop with CURLE_WRITE_ERROR
        }
        if let target {
            UnsafeMutableRawBufferPointer(rebasing: target[received..<received + count]).copyMemory(from: bytes)
        } else {
            collected.append(contentsOf: bytes)
        }
        received += count
        return count
    }

    func header(_ data: UnsafeMutablePointer<CChar>?, _ count: Int) -> Int {
        guard let data else { return count }
        let line = String(decoding: UnsafeRawBufferPointer(start: data, count: count), as: UTF8.self)
        if line.hasPrefix("HTTP/") {
            // A new response (after 100 Continue or a redirect): an earlier one's headers and body are not ours.
            headers.removeAll()
            collected.removeAll()
            received = 0
            status = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        } else if let colon = line.firstIndex(of: ":") {
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmed()
            headers.append((name, value))
        }
        return count
    }
}

/// URLs as messages show them: the values of signature query parameters
/// (a presigned URL's) replaced, so no secret reaches a message or a log.
enum Redacted {
    static func url(_ url: String) -> String {
        guard let question = url.firstIndex(of: "?") else { return url }
        let query = url[url.index(after: question)...].split(separator: "&", omittingEmptySubsequences: false).map { pair -> String in
            let name = pair.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
            let secret = ["x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "awsaccesskeyid"].contains(name.lowercased())
            return secret ? name + "=REDACTED" : String(pair)
        }
        return url[..<question] + "?" + query.joined(separator: "&")
    }
}

/// The text of simple XML elements in S3's small answers (no nesting of the same name, no CDATA).
enum XMLText {
    static func first(_ element: String, in text: String) -> String? {
        all(element, in: text).first
    }

    static func all(_ element: String, in text: String) -> [String] {
        var found: [String] = []
        var rest = text[...]
        while let open = rest.firstRange(of: "<\(element)>"), let close = rest[open.upperBound...].firstRange(of: "</\(element)>") {
            found.append(unescape(String(rest[open.upperBound..<close.lowerBound])))
            rest = rest[close.upperBound...]
        }
        return found
    }

    static func unescape(_ text: String) -> String {
        guard text.contains("&") else { return text }
        return text.replacing("&quot;", with: "\"").replacing("&apos;", with: "'")
            .replacing("&lt;", with: "<").replacing("&gt;", with: ">").replacing("&amp;", with: "&")
    }

    static func escape(_ text: String) -> String {
        text.replacing("&", with: "&amp;").replacing("<", with: "&lt;").replacing(">", with: "&gt;").replacing("\"", with: "&quot;")
    }
}
