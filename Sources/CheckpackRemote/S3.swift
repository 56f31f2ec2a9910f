import Checkpack

/// AWS credentials. `description` never shows the secret or the token.
public struct AWSCredentials: Sendable, CustomStringConvertible {
    /// AWS_ACCESS_KEY_ID.
    public var accessKeyID: String
    /// AWS_SECRET_ACCESS_KEY: never printed.
    public var secretAccessKey: String
    /// AWS_SESSION_TOKEN, for temporary credentials.
    public var sessionToken: String?

    /// Credentials from their parts.
    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    public var description: String { "AWSCredentials(\(accessKeyID), secret hidden)" }
}

/// How to reach S3, found as the AWS CLI and boto3 find it:
/// - credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
///   `AWS_SESSION_TOKEN`, else from the profile `AWS_PROFILE` (or `default`)
///   in `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`);
/// - the region from `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile in
///   `~/.aws/config` (`AWS_CONFIG_FILE`), else us-east-1;
/// - the endpoint from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, addressed
///   path-style (`ENDPOINT/bucket/key`); else AWS's own, virtual-hosted;
/// - certificate authorities from `AWS_CA_BUNDLE`.
public struct S3Configuration: Sendable {
    /// Who signs the requests.
    public var credentials: AWSCredentials
    /// The region requests are signed for.
    public var region: String
    /// nil: AWS's endpoint for the region.
    public var endpoint: String?
    /// A PEM file of certificate authorities to trust (AWS_CA_BUNDLE); nil: the system's.
    public var caBundle: String?

    /// A configuration from its parts; `endpoint` nil means AWS itself.
    public init(credentials: AWSCredentials, region: String = "us-east-1", endpoint: String? = nil, caBundle: String? = nil) {
        self.credentials = credentials
        self.region = region
        self.endpoint = endpoint
        self.caBundle = caBundle
    }

    /// Settings as the AWS CLI reads them: credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN or a profile of ~/.aws/credentials (AWS_PROFILE), region from AWS_REGION/AWS_DEFAULT_REGION or ~/.aws/config, endpoint from AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL, CA bundle from AWS_CA_BUNDLE. `environment` nil: this process's.
    public static func fromEnvironment(_ environment: [String: String]? = nil) throws -> S3Configuration {
        let environment = environment ?? Environment.current
        func value(_ name: String) -> String? {
            guard let v = environment[name], !v.isEmpty else { return nil }
            return v
        }
        let home = Environment.home(environment)
        let profile = value("AWS_PROFILE") ?? value("AWS_DEFAULT_PROFILE") ?? "default"
        let credentials: AWSCredentials
        if let id = value("AWS_ACCESS_KEY_ID"), let secret = value("AWS_SECRET_ACCESS_KEY") {
            credentials = AWSCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: value("AWS_SESSION_TOKEN"))
        } else {
            let file = value("AWS_SHARED_CREDENTIALS_FILE") ?? home + "/.aws/credentials"
            let section = IniFile.section(profile, in: file)
            guard let id = section["aws_access_key_id"], let secret = section["aws_secret_access_key"] else {
                throw CheckpackError(.invalidArgument, "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in \(file) (AWS_PROFILE)")
            }
            credentials = AWSCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: section["aws_session_token"])
        }
        let configFile = value("AWS_CONFIG_FILE") ?? home + "/.aws/config"
        let config = IniFile.section(profile == "default" ? "default" : "profile " + profile, in: configFile)
        let region = value("AWS_REGION") ?? value("AWS_DEFAULT_REGION") ?? config["region"] ?? "us-east-1"
        let endpoint = value("AWS_ENDPOINT_URL_S3") ?? value("AWS_ENDPOINT_URL")
        return S3Configuration(credentials: credentials, region: region, endpoint: endpoint.map { String($0.trimmingSuffix("/")) },
                               caBundle: value("AWS_CA_BUNDLE"))
    }

    /// The URL of `key` in `bucket`.
    func url(bucket: String, key: String, query: String = "") -> String {
        let path = S3Configuration.encodePath(key)
        let suffix = query.isEmpty ? "" : "?" + query
        if let endpoint {
            return "\(endpoint)/\(bucket)/\(path)\(suffix)"
        }
        // Virtual-hosted style, except for bucket names with dots (TLS certificates cover one label).
        if bucket.contains(".") {
            return "https://s3.\(region).amazonaws.com/\(bucket)/\(path)\(suffix)"
        }
        return "https://\(bucket).s3.\(region).amazonaws.com/\(path)\(suffix)"
    }

    var signing: AWSSigning { AWSSigning(region: region, credentials: credentials) }

    /// Percent-encodes a key as SigV4 wants it: every byte but A-Z a-z 0-9 - _ . ~ and /.
    static func encodePath(_ key: String) -> String {
        var out = ""
        for byte in key.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"), UInt8(ascii: "/"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF".utf8)
                out.unicodeScalars.append("%")
                out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte >> 4)]))
                out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte & 15)]))
            }
        }
        return out
    }

    /// Query values are encoded like keys, and "/" too.
    static func encodeQueryValue(_ value: String) -> String {
        encodePath(value).replacing("/", with: "%2F")
    }
}

extension String {
    func trimmingSuffix(_ suffix: Character) -> Substring {
        var s = self[...]
        while s.last == suffix { s = s.dropLast() }
        return s
    }
}

/// Sections of an AWS-style INI file (`[name]`, `key = value`).
enum IniFile {
    static func section(_ name: String, in path: String) -> [String: String] {
        guard let text = readTextFile(path) else { return [:] }
        var current: String? = nil
        var found: [String: String] = [:]
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmed()
            if line.hasPrefix("#") || line.hasPrefix(";") || line.isEmpty { continue }
            if line.hasPrefix("["), line.hasSuffix("]") {
                current = line.dropFirst().dropLast().trimmed()
                continue
            }
            guard current == name, let equals = line.firstIndex(of: "=") else { continue }
            let key = line[..<equals].trimmed().lowercased()
            found[key] = line[line.index(after: equals)...].trimmed()
        }
        return found
    }
}

/// One object in an S3 bucket, and the requests Checkpack makes on it.
public struct S3Object: Sendable {
    /// The bucket's name.
    public let bucket: String
    /// The object's key in the bucket.
    public let key: String
    /// Credentials, region and endpoint.
    public let configuration: S3Configuration
    let client: HTTPClient

    /// The object at `key` in `bucket`; nothing is sent yet.
    public init(bucket: String, key: String, configuration: S3Configuration, options: RemoteOptions = RemoteOptions()) throws {
        guard !bucket.isEmpty, !key.isEmpty else {
            throw CheckpackError(.invalidArgument, "an S3 URL needs a bucket and a key: s3://bucket/key")
        }
        self.bucket = bucket
        self.key = key
        self.configuration = configuration
        var options = options
        options.caBundle = options.caBundle ?? configuration.caBundle
        self.client = try HTTPClient(options: options)
    }

    /// `s3://bucket/key`, for messages.
    public var name: String { "s3://\(bucket)/\(key)" }

    func request(_ method: String, query: String = "", headers: [String] = [], body: [UInt8]? = nil) -> HTTPRequest {
        HTTPRequest(method: method, url: configuration.url(bucket: bucket, key: key, query: query), headers: headers, body: body,
                    signing: configuration.signing)
    }

    /// Deletes the object (no error if it is missing).
    public func delete() throws {
        _ = try client.perform(request("DELETE"), accept: { $0 == 204 || $0 == 200 || $0 == 404 })
    }

    /// The IDs of multipart uploads under way for this key.
    public func pendingUploads() throws -> [String] {
        let url = configuration.url(bucket: bucket, key: "", query: "prefix=\(S3Configuration.encodeQueryValue(key))&uploads=")
        let response = try client.perform(HTTPRequest(method: "GET", url: url, signing: configuration.signing))
        let text = String(decoding: response.body, as: UTF8.self)
        return text.split(separator: "<Upload>").dropFirst().compactMap { upload in
            XMLText.first("Key", in: String(upload)) == key ? XMLText.first("UploadId", in: String(upload)) : nil
        }
    }
}
