import Checkpack

/// Where an archive is: a local path, an `http(s)://` URL, or `s3://bucket/key`.
public enum ArchiveLocation: Sendable, Equatable {
    /// A local path.
    case file(String)
    /// An `http://` or `https://` URL (read only).
    case http(String)
    /// An object in S3 (or an S3-compatible store).
    case s3(bucket: String, key: String)

    /// Reads a location the way the CLI and the storage backends take it.
    /// Anything without one of the two schemes is a local path, as given.
    public init(_ string: String) throws {
        if string.hasPrefix("s3://") {
            let rest = string.dropFirst(5)
            guard let slash = rest.firstIndex(of: "/"), slash != rest.startIndex, rest.index(after: slash) != rest.endIndex else {
                throw CheckpackError(.invalidArgument, "an S3 URL needs a bucket and a key: s3://bucket/key (got \(string))")
            }
            self = .s3(bucket: String(rest[..<slash]), key: String(rest[rest.index(after: slash)...]))
        } else if string.hasPrefix("http://") || string.hasPrefix("https://") {
            self = .http(string)
        } else {
            self = .file(string)
        }
    }

    /// True for an HTTP(S) URL or an S3 object.
    public var isRemote: Bool {
        if case .file = self { return false }
        return true
    }

    /// Opens the archive for random access (one request for a remote one).
    public func openSource(options: RemoteOptions = RemoteOptions(), environment: [String: String]? = nil) throws -> any ArchiveSource {
        let environment = environment ?? Environment.current
        switch self {
        case .file(let path): return try FileSource(path: path)
        case .http(let url):
            var options = options
            // curl's own convention, for HTTPS servers with a private CA.
            options.caBundle = options.caBundle ?? environment["CURL_CA_BUNDLE"].flatMap { $0.isEmpty ? nil : $0 }
            return try RemoteSource(url: url, options: options)
        case .s3(let bucket, let key):
            return try RemoteSource(object: S3Object(bucket: bucket, key: key, configuration: .fromEnvironment(environment), options: options))
        }
    }

    /// The S3 object this location names (S3 settings from `environment`,
    /// else this process's); an error for a path or an HTTP URL.
    public func s3Object(options: RemoteOptions = RemoteOptions(), environment: [String: String]? = nil) throws -> S3Object {
        guard case .s3(let bucket, let key) = self else {
            throw CheckpackError(.invalidArgument, "not an s3://bucket/key URL")
        }
        return try S3Object(bucket: bucket, key: key, configuration: .fromEnvironment(environment ?? Environment.current), options: options)
    }

    /// A sink that writes an archive here: a temporary file renamed into
    /// place, or an S3 multipart upload. HTTP URLs are read-only.
    public func openSink(overwrite: Bool, partSize: Int = S3MultipartSink.defaultPartSize, options: RemoteOptions = RemoteOptions(),
                         environment: [String: String]? = nil) throws -> any ArchiveSink {
        let environment = environment ?? Environment.current
        switch self {
        case .file(let path): return try FileSink(path: path, overwrite: overwrite)
        case .http(let url): throw CheckpackError(.invalidArgument, "cannot write to an HTTP URL; write to a file or to s3://bucket/key", path: url)
        case .s3(let bucket, let key):
            let object = try S3Object(bucket: bucket, key: key, configuration: .fromEnvironment(environment), options: options)
            if !overwrite, try object.exists() {
                throw CheckpackError(.alreadyExists, "already exists", path: object.name)
            }
            return try S3MultipartSink(object: object, partSize: partSize)
        }
    }
}

extension S3Object {
    /// Whether the key holds an object (a HEAD request).
    public func exists() throws -> Bool {
        let response = try client.perform(request("HEAD"), accept: { $0 == 200 || $0 == 404 })
        return response.status == 200
    }
}

extension ArchiveReader {
    /// Opens the archive at a path, an `http(s)://` URL or an `s3://bucket/key` URL.
    public convenience init(location: String, options: RemoteOptions = RemoteOptions()) throws {
        try self.init(source: ArchiveLocation(location).openSource(options: options))
    }
}
