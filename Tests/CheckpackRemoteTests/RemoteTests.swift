@testable import Checkpack
@testable import CheckpackRemote
import CheckpackTestSupport
import CheckpackStorage
import Foundation
import Testing

/// A tree to pack: a large file that does not compress (several parts, many
/// frames), a compressible one, a small one and a folder.
func makeTree(_ root: String, largeBytes: Int) throws -> [String: [UInt8]] {
    let files: [String: [UInt8]] = [
        "large.bin": sampleBytes(largeBytes, seed: 1, compressible: false),
        "logs/run.txt": sampleBytes(3 << 20, seed: 2, compressible: true),
        "small.json": Array("{\"step\": 100}".utf8),
    ]
    try FileManager.default.createDirectory(atPath: root + "/logs", withIntermediateDirectories: true)
    for (name, bytes) in files { try Data(bytes).write(to: URL(fileURLWithPath: root + "/" + name)) }
    return files
}

func expectContents(_ reader: ArchiveReader, _ files: [String: [UInt8]]) throws {
    for (name, bytes) in files {
        let entry = try #require(reader.entry(named: name))
        #expect(try reader.read(entry) == bytes, "\(name) differs")
    }
}

let serversNeeded = Testing.ConditionTrait.enabled(if: TestServers.available || TestServers.required,
                                                   "needs moto[server] and nginx: run scripts/test-servers.py, or .ci/run")

@Suite(.serialized, serversNeeded) struct S3Tests {
    let servers: TestServers
    let scratch = Scratch()

    init() throws { servers = try TestServers.shared() }

    @Test func packIntoS3ThenReadVerifyAndUnpack() throws {
        let files = try makeTree(scratch.sub("tree"), largeBytes: 12 << 20)
        let object = try servers.object(uniqueKey("round-trip"))
        // 5 MiB parts: the 15 MiB archive goes up as a multipart upload of several parts.
        try Packer.pack(directory: scratch.sub("tree"), into: { _ in try S3MultipartSink(object: object, partSize: 5 << 20) })
        #expect(try object.exists())
        #expect(try object.pendingUploads().isEmpty)
        let reader = try ArchiveReader(source: RemoteSource(object: object))
        try expectContents(reader, files)
        #expect(try reader.verify().isEmpty)
        try Unpacker.unpack(reader, to: scratch.sub("out"))
        for (name, bytes) in files {
            #expect(contents(scratch.sub("out/" + name)) == Data(bytes))
        }
        try object.delete()
    }

    @Test func aSmallArchiveIsOnePut() throws {
        let object = try servers.object(uniqueKey("small"), viaProxy: true)
        try servers.resetProxy(servers.s3Proxy)
        let writer = try ArchiveWriter(sink: S3MultipartSink(object: object))
        try writer.addFile("a.txt", contents: Array("hello".utf8))
        try writer.finish()
        let stats = try servers.stats(servers.s3Proxy)
        #expect(stats.requests == ["PUT": 1])
        let reader = try ArchiveReader(source: RemoteSource(object: object))
        #expect(try reader.read(try #require(reader.entry(named: "a.txt"))) == Array("hello".utf8))
        try object.delete()
    }

    /// Open is one GET of the tail; 4 KiB from the middle of a 20 MiB entry costs
    /// at most two more requests and about one frame.
    @Test func openIsOneRequestAndASmallReadFetchesItsFrame() throws {
        let key = uniqueKey("small-read")
        let content = sampleBytes(20 << 20, seed: 3, compressible: true)
        let writer = try ArchiveWriter(sink: S3MultipartSink(object: try servers.object(key), partSize: 5 << 20))
        try writer.addFile("__0_0.distcp", contents: content)
        try writer.finish()

        try servers.resetProxy(servers.s3Proxy)
        let object = try servers.object(key, viaProxy: true)
        let reader = try ArchiveReader(source: RemoteSource(object: object))
        #expect(try servers.stats(servers.s3Proxy).total == 1)
        let entry = try #require(reader.entry(named: "__0_0.distcp"))
        let offset: UInt64 = 10 << 20 + 12345
        #expect(try reader.read(entry, offset: offset, count: 4096) == Array(content[Int(offset)..<Int(offset) + 4096]))
        let stats = try servers.stats(servers.s3Proxy)
        let largestFrame = try reader.frameExtents(of: entry).map { Int($0.storedLength) }.max() ?? 0
        #expect(stats.total <= 3, "\(stats.requests)")
        #expect(stats.response_bytes <= (1 << 20) + largestFrame + Format.frameHeaderSize + Int(RemoteOptions().tailSize))
        try object.delete()
    }

    @Test func transientFailuresAreRetried() throws {
        let files = try makeTree(scratch.sub("tree"), largeBytes: 2 << 20)
        let key = uniqueKey("retries")
        try Packer.pack(directory: scratch.sub("tree"), into: { _ in try S3MultipartSink(object: try servers.object(key)) })
        try servers.resetProxy(servers.s3Proxy)
        try servers.inject(["GET status:503", "GET reset", "GET short", "GET status:500", "GET status:429", "GET slow:3"], proxy: servers.s3Proxy)
        let reader = try ArchiveReader(source: RemoteSource(object: try servers.object(key, viaProxy: true)))
        try expectContents(reader, files)
        #expect(try servers.stats(servers.s3Proxy).requests["GET", default: 0] >= 7)
        try servers.object(key).delete()
    }

    /// A failure answered to a small range read (its error body longer than the
    /// range) is retried like any other, and its body never lands in the caller's buffer.
    @Test func aFailedSmallRangeReadIsRetried() throws {
        let key = uniqueKey("small-range-retry")
        let content = sampleBytes(1 << 20, seed: 4, compressible: false)
        let writer = try ArchiveWriter(sink: S3MultipartSink(object: try servers.object(key)))
        try writer.addFile("small", contents: Array("tiny".utf8))   // one 44-byte frame, far from the tail
        try writer.addFile("data", contents: content)
        try writer.finish()
        // The GETs the read costs without faults (its table page and its frame), then with two.
        var gets: [Int] = []
        for faults in [[], ["GET status:503", "GET status:500"]] {
            let reader = try ArchiveReader(source: RemoteSource(object: try servers.object(key, viaProxy: true)))
            try servers.resetProxy(servers.s3Proxy)
            try servers.inject(faults, proxy: servers.s3Proxy)
            #expect(try reader.read(try #require(reader.entry(named: "small"))) == Array("tiny".utf8))
            gets.append(try servers.stats(servers.s3Proxy).requests["GET", default: 0])
        }
        #expect(gets[1] == gets[0] + 2, "\(gets)")
        try servers.object(key).delete()
    }

    @Test func aServerThatKeepsFailingIsOneCleanError() throws {
        try servers.resetProxy(servers.s3Proxy)
        try servers.inject(Array(repeating: "GET status:503", count: RemoteOptions.fastRetries.attempts), proxy: servers.s3Proxy)
        let error = try #require(throws: CheckpackError.self) {
            try RemoteSource(object: try servers.object("tests/any.ckpk", viaProxy: true))
        }
        #expect(error.kind == .remote(status: 503))
        #expect(error.description.contains("HTTP 503 SlowDown"), "\(error)")
        #expect(error.description.contains("after \(RemoteOptions.fastRetries.attempts) tries"), "\(error)")
        #expect(error.description.contains("s3://\(servers.bucket)/tests/any.ckpk"), "\(error)")
        #expect(!error.description.contains(servers.credentials.secretAccessKey))
        try servers.resetProxy(servers.s3Proxy)
    }

    @Test func aPartIsRetriedAndAFailedUploadLeavesNothing() throws {
        let files = try makeTree(scratch.sub("tree"), largeBytes: 12 << 20)
        let key = uniqueKey("upload-faults")
        try servers.resetProxy(servers.s3Proxy)
        try servers.inject(["PUT status:503", "PUT reset", "POST status:500"], proxy: servers.s3Proxy)
        try Packer.pack(directory: scratch.sub("tree"), into: { _ in try S3MultipartSink(object: try servers.object(key, viaProxy: true), partSize: 5 << 20) })
        try expectContents(try ArchiveReader(source: RemoteSource(object: try servers.object(key))), files)
        try servers.object(key).delete()

        // Every PUT fails: the pack fails, and neither an object nor an upload is left.
        try servers.resetProxy(servers.s3Proxy)
        try servers.inject(Array(repeating: "PUT status:500", count: 40), proxy: servers.s3Proxy)
        let object = try servers.object(key, viaProxy: true)
        let failed = errorKind {
            try Packer.pack(directory: scratch.sub("tree"), into: { _ in try S3MultipartSink(object: object, partSize: 5 << 20) })
        }
        #expect(failed == .remote(status: 500))
        try servers.resetProxy(servers.s3Proxy)
        #expect(try !servers.object(key).exists())
        #expect(try servers.object(key).pendingUploads().isEmpty)
    }

    @Test func anObjectReplacedWhileReadIsAnErrorNotAMix() throws {
        let key = uniqueKey("replaced")
        let object = try servers.object(key)
        for seed in [UInt64(1), 2] {
            let writer = try ArchiveWriter(sink: S3MultipartSink(object: object))
            try writer.addFile("data", contents: sampleBytes(1 << 20, seed: seed, compressible: false))
            try writer.finish()
            if seed == 1 {
                let reader = try ArchiveReader(source: RemoteSource(object: object))
                let entry = try #require(reader.entry(named: "data"))
                // Replace it, then read what was not in the tail read at open.
                let replacement = try ArchiveWriter(sink: S3MultipartSink(object: object))
                try replacement.addFile("data", contents: sampleBytes(1 << 20, seed: 3, compressible: false))
                try replacement.finish()
                let error = try #require(throws: CheckpackError.self) { try reader.read(entry, offset: 0, count: 4096) }
                #expect(error.kind == .remote(status: 412))
                #expect(error.description.contains("changed since it was opened"), "\(error)")
            }
        }
        try object.delete()
    }

    @Test func theCommandLineWithAWSEnvironmentVariables() throws {
        let files = try makeTree(scratch.sub("tree"), largeBytes: 1 << 20)
        let url = "s3://\(servers.bucket)/\(uniqueKey("cli"))"
        let env = servers.awsEnvironment()
        var result = try CLI.run(["pack", scratch.sub("tree"), url, "--quiet"], environment: env)
        #expect(result.status == 0, "\(result.stderr)")
        result = try CLI.run(["pack", scratch.sub("tree"), url, "--quiet"], environment: env)
        #expect(result.status == 2 && result.stderr.contains("already exists"), "\(result.stderr)")
        result = try CLI.run(["verify", url], environment: env)
        #expect(result.status == 0, "\(result.stderr)")
        result = try CLI.run(["cat", url, "large.bin", "--offset", "1000", "--length", "4096"], environment: env)
        #expect(Array(result.stdout) == Array(files["large.bin"]![1000..<5096]))
        result = try CLI.run(["unpack", url, scratch.sub("out"), "--quiet"], environment: env)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(contents(scratch.sub("out/large.bin")) == Data(files["large.bin"]!))

        var wrong = env
        wrong["AWS_SECRET_ACCESS_KEY"] = "not-the-secret-0123456789"
        result = try CLI.run(["ls", url], environment: wrong)
        #expect(result.status == 1)
        #expect(result.stderrLines.count == 1 && result.stderr.contains("HTTP 403"), "\(result.stderr)")
        #expect(!result.stderr.contains("not-the-secret") && !result.stderr.contains(servers.credentials.secretAccessKey))
        try servers.object(String(url.dropFirst(6 + servers.bucket.count))).delete()
    }

    /// `cp` moves an archive to S3 and back byte for byte; a damaged source is refused
    /// and leaves nothing under the key.
    @Test func copyToS3AndBackChecksEveryFrame() throws {
        _ = try makeTree(scratch.sub("tree"), largeBytes: 3 << 20)
        try Packer.pack(directory: scratch.sub("tree"), to: scratch.sub("a.ckpk"))
        let url = "s3://\(servers.bucket)/\(uniqueKey("cp"))"
        let env = servers.awsEnvironment()
        var result = try CLI.run(["cp", scratch.sub("a.ckpk"), url, "--quiet"], environment: env)
        #expect(result.status == 0, "\(result.stderr)")
        // Down again through the counting proxy: the archive is fetched once (checked as it is copied).
        try servers.resetProxy(servers.s3Proxy)
        result = try CLI.run(["cp", url, scratch.sub("b.ckpk"), "--quiet"], environment: servers.awsEnvironment(viaProxy: true))
        #expect(result.status == 0, "\(result.stderr)")
        #expect(contents(scratch.sub("b.ckpk")) == contents(scratch.sub("a.ckpk")))
        let size = try #require(contents(scratch.sub("a.ckpk"))).count
        #expect(try servers.stats(servers.s3Proxy).response_bytes <= size + (64 << 10), "fetched more than once")

        var damaged = try #require(contents(scratch.sub("a.ckpk")))
        damaged[damaged.count / 2] ^= 0x10   // inside the large file's frames
        try damaged.write(to: URL(fileURLWithPath: scratch.sub("bad.ckpk")))
        let badURL = "s3://\(servers.bucket)/\(uniqueKey("cp-bad"))"
        result = try CLI.run(["cp", scratch.sub("bad.ckpk"), badURL, "--quiet"], environment: env)
        #expect(result.status == 1 && result.stderrLines.count == 1 && result.stderr.contains("CRC32C"), "\(result.stderr)")
        let bad = try servers.object(String(badURL.dropFirst(6 + servers.bucket.count)))
        #expect(try !bad.exists())
        #expect(try bad.pendingUploads().isEmpty)
        try servers.object(String(url.dropFirst(6 + servers.bucket.count))).delete()
    }

    /// SIGTERM during `pack … s3://` aborts the multipart upload it started.
    @Test func anInterruptedPackAbortsItsUpload() throws {
        _ = try makeTree(scratch.sub("tree"), largeBytes: 16 << 20)
        let key = uniqueKey("interrupted")
        try servers.resetProxy(servers.s3Proxy)
        // The second part stalls long enough to be interrupted.
        try servers.inject(["PUT slow:20"], proxy: servers.s3Proxy)
        let process = try CLI.start(["pack", scratch.sub("tree"), "s3://\(servers.bucket)/\(key)", "--part-size", "5M", "--quiet"],
                                    environment: servers.awsEnvironment(viaProxy: true))
        let object = try servers.object(key)
        let deadline = Date().addingTimeInterval(30)
        while try object.pendingUploads().isEmpty, Date() < deadline { usleep(100_000) }
        #expect(try !object.pendingUploads().isEmpty)
        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationStatus == 128 + SIGTERM)
        #expect(try object.pendingUploads().isEmpty)
        #expect(try !object.exists())
        try servers.resetProxy(servers.s3Proxy)
    }
}

@Suite(.serialized, serversNeeded) struct HTTPTests {
    let servers: TestServers
    let scratch = Scratch()

    init() throws { servers = try TestServers.shared() }

    /// Packs a tree into the folder nginx serves; returns its file name.
    func publish(_ name: String, largeBytes: Int = 6 << 20) throws -> (String, [String: [UInt8]]) {
        let files = try makeTree(scratch.sub("tree"), largeBytes: largeBytes)
        let file = UUID().uuidString + "-" + name
        // Small frames: many of them, to show that they are fetched in few merged requests.
        try Packer.pack(directory: scratch.sub("tree"), to: servers.httpRoot + "/" + file, options: WriterOptions(frameSize: 64 << 10))
        return (file, files)
    }

    @Test func rangeReadsFromNginx() throws {
        let (file, files) = try publish("plain.ckpk")
        try servers.resetProxy(servers.httpProxy)
        let source = try RemoteSource(url: servers.httpProxy + "/" + file, options: .fastRetries)
        #expect(source.etag != nil)
        let reader = try ArchiveReader(source: source)
        #expect(try servers.stats(servers.httpProxy).total == 1)
        try expectContents(reader, files)
        #expect(try reader.verify().isEmpty)
        // The large file's frames came in few merged GETs, not one per frame.
        let frames = try reader.frameExtents(of: try #require(reader.entry(named: "large.bin"))).count
        #expect(frames == 96)
        #expect(try servers.stats(servers.httpProxy).total < 10)
        try FileManager.default.removeItem(atPath: servers.httpRoot + "/" + file)
    }

    @Test func httpsWithTheTestCertificateAuthority() throws {
        let (file, files) = try publish("tls.ckpk", largeBytes: 1 << 20)
        var options = RemoteOptions.fastRetries
        #expect(errorKind { try RemoteSource(url: servers.httpsURL + "/" + file, options: options) } == .remote(status: 0))
        options.caBundle = servers.caBundle
        try expectContents(try ArchiveReader(source: RemoteSource(url: servers.httpsURL + "/" + file, options: options)), files)
        try FileManager.default.removeItem(atPath: servers.httpRoot + "/" + file)
    }

    @Test func cutAndResetBodiesAreRetriedNeverReturned() throws {
        let (file, files) = try publish("faults.ckpk")
        try servers.resetProxy(servers.httpProxy)
        try servers.inject(["GET short", "GET reset", "GET short", "GET reset"], proxy: servers.httpProxy)
        try expectContents(try ArchiveReader(source: RemoteSource(url: servers.httpProxy + "/" + file, options: .fastRetries)), files)
        try servers.resetProxy(servers.httpProxy)
        try FileManager.default.removeItem(atPath: servers.httpRoot + "/" + file)
    }

    @Test func aMissingURLIsNotFound() throws {
        let error = try #require(throws: CheckpackError.self) { try RemoteSource(url: servers.httpURL + "/missing.ckpk") }
        #expect(error.kind == .notFound)
        let result = try CLI.run(["unpack", servers.httpURL + "/missing.ckpk", scratch.sub("out")])
        #expect(result.status == 1 && result.stderrLines.count == 1 && result.stderr.contains("HTTP 404"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: scratch.sub("out")))
    }
}

@Suite struct LocationTests {
    @Test func stringsBecomeLocations() throws {
        #expect(try ArchiveLocation("s3://bucket/a/b.ckpk") == .s3(bucket: "bucket", key: "a/b.ckpk"))
        #expect(try ArchiveLocation("https://host/x.ckpk") == .http("https://host/x.ckpk"))
        #expect(try ArchiveLocation("relative/x.ckpk") == .file("relative/x.ckpk"))
        #expect(try ArchiveLocation("s3:/not-a-url") == .file("s3:/not-a-url"))
        for bad in ["s3://", "s3://bucket", "s3://bucket/", "s3:///key"] {
            #expect(errorKind { try ArchiveLocation(bad) } == .invalidArgument, "\(bad)")
        }
    }

    @Test func keysAreEncodedOnceAndTheEndpointIsPathStyle() {
        let config = S3Configuration(credentials: AWSCredentials(accessKeyID: "A", secretAccessKey: "S"), endpoint: "http://127.0.0.1:9000")
        #expect(config.url(bucket: "b", key: "step 1/model+x.ckpk") == "http://127.0.0.1:9000/b/step%201/model%2Bx.ckpk")
        let aws = S3Configuration(credentials: AWSCredentials(accessKeyID: "A", secretAccessKey: "S"), region: "eu-west-1")
        #expect(aws.url(bucket: "b", key: "k") == "https://b.s3.eu-west-1.amazonaws.com/k")
    }

    @Test func credentialsComeFromTheEnvironmentOrAProfile() throws {
        let scratch = Scratch()
        try "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[work]\naws_access_key_id = W\naws_secret_access_key = WS\naws_session_token = T\n"
            .write(toFile: scratch.sub("credentials"), atomically: true, encoding: .utf8)
        try "[profile work]\nregion = ap-south-1\n".write(toFile: scratch.sub("config"), atomically: true, encoding: .utf8)
        let files = ["AWS_SHARED_CREDENTIALS_FILE": scratch.sub("credentials"), "AWS_CONFIG_FILE": scratch.sub("config")]
        var config = try S3Configuration.fromEnvironment(files)
        #expect(config.credentials.accessKeyID == "D" && config.region == "us-east-1" && config.endpoint == nil)
        config = try S3Configuration.fromEnvironment(files.merging(["AWS_PROFILE": "work"]) { $1 })
        #expect(config.credentials.accessKeyID == "W" && config.credentials.sessionToken == "T" && config.region == "ap-south-1")
        config = try S3Configuration.fromEnvironment(files.merging(["AWS_ACCESS_KEY_ID": "E", "AWS_SECRET_ACCESS_KEY": "ES", "AWS_REGION": "us-west-2",
                                                                    "AWS_ENDPOINT_URL_S3": "http://s3.local/", "AWS_ENDPOINT_URL": "http://other"]) { $1 })
        #expect(config.credentials.accessKeyID == "E" && config.region == "us-west-2" && config.endpoint == "http://s3.local")
        #expect(!"\(config.credentials)".contains("ES"))
        #expect(errorKind { try S3Configuration.fromEnvironment(["HOME": scratch.path]) } == .invalidArgument)
    }

    @Test func contentRangesAreChecked() {
        #expect(ContentRange("bytes 0-9/10") == ContentRange(start: 0, end: 9, total: 10))
        for bad in ["bytes 9-0/10", "bytes 0-10/10", "bytes */10", "bytes 0-9/x", "items 0-9/10", "bytes 0-18446744073709551616/1"] {
            #expect(ContentRange(bad) == nil, "\(bad)")
        }
    }
}

@Suite(serversNeeded) struct RemoteCheckpointTests {
    /// A checkpoint saved into an archive, put on S3, loads with each item's frames fetched remotely.
    @Test func aCheckpointLoadsStraightFromS3() throws {
        let servers = try TestServers.shared()
        let scratch = Scratch()
        let bytes = sampleBytes(3 * 1000 * 4, seed: 5, compressible: true)
        let weight = try Tensor(dtype: .float32, shape: [3, 1000], bytes: bytes)
        let bias = try Tensor(dtype: .bfloat16, shape: [8], bytes: Array(bytes.prefix(16)))
        try save(["w": .tensor(weight), "b": .tensor(bias)], checkpointID: scratch.sub("c.ckpk"), writer: ArchiveStorageWriter())
        let key = uniqueKey("checkpoint")
        let writer = try ArchiveWriter(sink: S3MultipartSink(object: try servers.object(key)))
        try writer.appendEntries(of: ArchiveReader(path: scratch.sub("c.ckpk")))
        try writer.finish()
        let reader = ArchiveStorageReader(open: { id in
            try ArchiveLocation(id).openSource(environment: servers.awsEnvironment())
        })
        let loaded = try load(["w": .tensor(.zeros(.float32, [3, 1000])), "b": .tensor(.zeros(.bfloat16, [8]))],
                              checkpointID: "s3://\(servers.bucket)/\(key)", reader: reader)
        #expect(loaded["w"] == .tensor(weight))
        #expect(loaded["b"] == .tensor(bias))
        try servers.object(key).delete()
    }

    /// Three ranks save one object through one upload: rank 0's data is small, rank 1's spans
    /// several 5 MiB parts, rank 2 has none; the object loads whole, and nothing is left pending.
    @Test(arguments: [false, true]) func threeRanksSaveOneS3ObjectInOneUpload(failing: Bool) throws {
        let servers = try TestServers.shared()
        let key = uniqueKey("ranks")
        let url = "s3://\(servers.bucket)/\(key)"
        let environment = servers.awsEnvironment()
        let tensors = [try Tensor(dtype: .float32, shape: [100], bytes: sampleBytes(400, seed: 1, compressible: false)),
                       try Tensor(dtype: .float32, shape: [3, 1 << 20], bytes: sampleBytes(12 << 20, seed: 2, compressible: false))]
        let outcomes = try InProcessGroup.run(worldSize: 3) { group -> String? in
            var options = WriterOptions()
            options.threads = 1
            let writer = ArchiveStorageWriter(options: options, environment: environment)
            let state: StateDict = group.rank < 2 ? ["t\(group.rank)": .tensor(tensors[group.rank])] : [:]
            do {
                try save(state, checkpointID: url, writer: writer, planner: failing && group.rank == 1 ? FailingSavePlanner() : DefaultSavePlanner(),
                         collectives: group)
                return nil
            } catch {
                return "\(error)"
            }
        }
        let object = try servers.object(key)
        #expect(try object.pendingUploads().isEmpty)
        if failing {
            #expect(outcomes.allSatisfy { $0?.contains("rank 1") == true }, "\(outcomes)")
            #expect(try !object.exists())
            return
        }
        #expect(outcomes.allSatisfy { $0 == nil }, "\(outcomes)")
        let reader = ArchiveStorageReader(open: { try ArchiveLocation($0).openSource(environment: environment) })
        let loaded = try load(["t0": .tensor(.zeros(.float32, [100])), "t1": .tensor(.zeros(.float32, [3, 1 << 20]))],
                              checkpointID: url, reader: reader)
        #expect(loaded["t0"] == .tensor(tensors[0]) && loaded["t1"] == .tensor(tensors[1]))
        #expect(try ArchiveReader(source: ArchiveLocation(url).openSource(environment: environment)).verify().isEmpty)
        try object.delete()
    }
}

/// Fails rank 1's save once its data is being written.
final class FailingSavePlanner: SavePlanner, @unchecked Sendable {
    let inner = DefaultSavePlanner()
    func setUp(stateDict: StateDict, isCoordinator: Bool) { inner.setUp(stateDict: stateDict, isCoordinator: isCoordinator) }
    func createLocalPlan() throws -> SavePlan { try inner.createLocalPlan() }
    func createGlobalPlan(_ plans: [SavePlan]) throws -> (plans: [SavePlan], metadata: Metadata) { try inner.createGlobalPlan(plans) }
    func finishPlan(_ plan: SavePlan) throws -> SavePlan { plan }
    func resolveData(_ item: WriteItem) throws -> [UInt8] { throw CheckpackError(.io(EIO), "the disk is on fire") }
}
