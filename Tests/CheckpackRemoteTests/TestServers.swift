import CheckpackTestSupport
import Checkpack
@testable import CheckpackRemote
import Foundation
import Testing

/// The real servers the remote tests run against (scripts/test-servers.py):
/// moto's S3 with authentication on, nginx over HTTP and HTTPS, and a fault
/// proxy in front of each. `.ci/run` starts them once and exports their
/// addresses; otherwise the first test starts them with the Python from
/// `CHECKPACK_VENV` (default /tmp/checkpack-ci-venv), which needs moto[server].
struct TestServers: Sendable {
    let values: [String: String]

    subscript(_ name: String) -> String { values["CHECKPACK_TEST_" + name] ?? "" }

    var s3Endpoint: String { self["S3_ENDPOINT"] }
    var s3Proxy: String { self["S3_PROXY"] }
    var bucket: String { self["S3_BUCKET"] }
    var httpRoot: String { self["HTTP_ROOT"] }
    var httpURL: String { self["HTTP_URL"] }
    var httpProxy: String { self["HTTP_PROXY"] }
    var httpsURL: String { self["HTTPS_URL"] }
    var caBundle: String { self["CA_BUNDLE"] }

    var credentials: AWSCredentials {
        AWSCredentials(accessKeyID: self["S3_ACCESS_KEY_ID"], secretAccessKey: self["S3_SECRET_ACCESS_KEY"])
    }

    /// The environment a user would set to reach the S3 server (through the proxy when asked).
    func awsEnvironment(viaProxy: Bool = false) -> [String: String] {
        ["AWS_ACCESS_KEY_ID": self["S3_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": self["S3_SECRET_ACCESS_KEY"],
         "AWS_REGION": self["S3_REGION"], "AWS_ENDPOINT_URL": viaProxy ? s3Proxy : s3Endpoint, "HOME": "/nonexistent"]
    }

    func configuration(viaProxy: Bool = false) -> S3Configuration {
        S3Configuration(credentials: credentials, region: self["S3_REGION"], endpoint: viaProxy ? s3Proxy : s3Endpoint)
    }

    func object(_ key: String, viaProxy: Bool = false, options: RemoteOptions = .fastRetries) throws -> S3Object {
        try S3Object(bucket: bucket, key: key, configuration: configuration(viaProxy: viaProxy), options: options)
    }

    /// Whether the tests can run: servers already started, or the means to start them.
    static let available: Bool = {
        let environment = ProcessInfo.processInfo.environment
        if environment["CHECKPACK_TEST_S3_ENDPOINT"] != nil { return true }
        return FileManager.default.isExecutableFile(atPath: venv + "/bin/moto_server")
            && FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx")
    }()

    /// In CI the remote tests must run: missing servers fail them instead of skipping them.
    static let required = ProcessInfo.processInfo.environment["CI"] != nil

    static var venv: String { ProcessInfo.processInfo.environment["CHECKPACK_VENV"] ?? "/tmp/checkpack-ci-venv" }

    static func shared() throws -> TestServers {
        try started.get()
    }

    private static let started: Result<TestServers, any Error> = Result {
        let environment = ProcessInfo.processInfo.environment
        if environment["CHECKPACK_TEST_S3_ENDPOINT"] != nil {
            return TestServers(values: environment.filter { $0.key.hasPrefix("CHECKPACK_TEST_") })
        }
        let dir = NSTemporaryDirectory() + "checkpack-servers-\(getpid())"
        let envFile = dir + "/env"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: venv + "/bin/python")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/test-servers.py").path
        process.arguments = [script, "--dir", dir, "--env-file", envFile]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: envFile) {
            guard process.isRunning, Date() < deadline else {
                throw CheckpackError(.io(ETIMEDOUT), "the test servers did not start (see \(dir))")
            }
            usleep(100_000)
        }
        let text = try String(contentsOfFile: envFile, encoding: .utf8)
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { values[String(parts[0])] = String(parts[1]) }
        }
        return TestServers(values: values)
    }

    // MARK: The fault proxy

    /// Asks the proxy at `proxy` to inject `faults` ("GET status:503", "PUT reset", ...), each once.
    func inject(_ faults: [String], proxy: String) throws {
        let client = try HTTPClient(options: RemoteOptions())
        _ = try client.perform(HTTPRequest(method: "POST", url: proxy + "/__proxy__/faults", body: Array(faults.joined(separator: "\n").utf8)))
    }

    func resetProxy(_ proxy: String) throws {
        let client = try HTTPClient(options: RemoteOptions())
        _ = try client.perform(HTTPRequest(method: "POST", url: proxy + "/__proxy__/reset", body: []))
    }

    struct ProxyStats: Decodable {
        var requests: [String: Int]
        var request_bytes: Int
        var response_bytes: Int
        var ranges: [String]
        var total: Int { requests.values.reduce(0, +) }
    }

    func stats(_ proxy: String) throws -> ProxyStats {
        let client = try HTTPClient(options: RemoteOptions())
        let response = try client.perform(HTTPRequest(method: "GET", url: proxy + "/__proxy__/stats"))
        return try JSONDecoder().decode(ProxyStats.self, from: Data(response.body))
    }
}

extension RemoteOptions {
    /// Retries that do not make the tests wait: a few tries, short backoff, short stall timeout.
    static var fastRetries: RemoteOptions {
        var options = RemoteOptions()
        options.attempts = 8
        options.initialBackoff = 0.01
        options.maxBackoff = 0.05
        options.stallTimeout = 2
        return options
    }
}

/// A unique key per test, so tests can run in any order against one bucket.
func uniqueKey(_ name: String) -> String { "tests/\(name)-\(UUID().uuidString).ckpk" }

/// A file's bytes as Data, nil when it cannot be read.
func contents(_ path: String) -> Data? { readFile(path).map { Data($0) } }
