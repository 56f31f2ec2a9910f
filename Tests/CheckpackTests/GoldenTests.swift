import Checkpack
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The golden archives in fixtures/golden pin the bytes of format version 1:
/// a change to the writer or reader that alters them fails here. Regenerate
/// (only together with spec/FORMAT.md) with CHECKPACK_WRITE_FIXTURES=1 swift test --filter Golden.
@Suite struct GoldenTests {
    static let directory: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) }
        return path + "/fixtures/golden"
    }()

    static var regenerate: Bool { getenv("CHECKPACK_WRITE_FIXTURES") != nil }

    /// The tiny archive of the spec's worked hex dump.
    static func writeTiny(_ path: String) throws {
        let writer = try ArchiveWriter(path: path, options: WriterOptions(codec: .stored, threads: 1, overwrite: true))
        try writer.addDirectory("d", mode: 0o755)
        try writer.addFile("d/hello.txt", contents: Array("hello, checkpack\n".utf8), mode: 0o644)
        try writer.finish()
    }

    /// Every feature of the format: all codecs, several frames, item
    /// boundaries, attributes, empty file, empty directory, unicode name.
    static let featureFiles: [(name: String, bytes: [UInt8], codec: Codec)] = [
        ("weights/zstd.bin", sampleBytes(10_000, seed: 21), .zstd),
        ("weights/zlib.bin", sampleBytes(9_000, seed: 22), .zlib),
        ("weights/stored.bin", sampleBytes(5_000, seed: 23, compressible: false), .stored),
        ("empty.txt", [], .zstd),
        ("名前/ü.txt", Array("unicode name\n".utf8), .zstd),
    ]

    static func writeFeatures(_ path: String) throws {
        let writer = try ArchiveWriter(path: path, options: WriterOptions(frameSize: 4096, threads: 1, overwrite: true))
        try writer.addDirectory("weights", mode: 0o750)
        for file in featureFiles {
            let boundaries: [UInt64] = file.name == "weights/zstd.bin" ? [1000, 6000] : []
            let attributes = file.name == "weights/zstd.bin" ? ["dtype": "bfloat16", "shape": "[5000]"] : [:]
            try writer.addFile(file.name, contents: file.bytes, mode: 0o640, attributes: attributes,
                               itemBoundaries: boundaries, codec: file.codec)
        }
        try writer.addDirectory("empty-dir", mode: 0o700)
        try writer.finish()
    }

    @Test func regenerateWhenAsked() throws {
        guard Self.regenerate else { return }
        mkdir(Self.directory, 0o755)
        try Self.writeTiny(Self.directory + "/tiny.ckpk")
        try Self.writeFeatures(Self.directory + "/features.ckpk")
    }

    @Test func tinyIsWrittenByteForByte() throws {
        let dir = TemporaryDirectory()
        try Self.writeTiny(dir.sub("tiny.ckpk"))
        let golden = try #require(readFile(Self.directory + "/tiny.ckpk"))
        #expect(readFile(dir.sub("tiny.ckpk")) == golden)
        #expect(golden.count == 481)
    }

    @Test func tinyReads() throws {
        let reader = try ArchiveReader(path: Self.directory + "/tiny.ckpk")
        #expect(reader.entries.map(\.name) == ["d", "d/hello.txt"])
        let file = try #require(reader.entry(named: "d/hello.txt"))
        #expect(try reader.read(file) == Array("hello, checkpack\n".utf8))
        #expect(file.contentCRC == CRC32C.checksum(Array("hello, checkpack\n".utf8)))
        #expect(try reader.verify().isEmpty)
    }

    @Test func featuresRead() throws {
        let path = Self.directory + "/features.ckpk"
        let reader = try ArchiveReader(path: path)
        #expect(reader.entries.map(\.name) == ["weights"] + Self.featureFiles.map(\.name) + ["empty-dir"])
        for file in Self.featureFiles {
            let entry = try #require(reader.entry(named: file.name))
            #expect(try reader.read(entry) == file.bytes, "\(file.name)")
            #expect(entry.mode == 0o640)
        }
        let zstd = try #require(reader.entry(named: "weights/zstd.bin"))
        #expect(zstd.itemBoundaries == [1000, 6000])
        #expect(zstd.attribute("dtype") == "bfloat16")
        #expect(reader.frames(of: zstd).map(\.header.decodedLength) == [1000, 4096, 904, 4000])
        #expect(Set(reader.index.frames.map(\.header.codec)) == Set(Codec.allCases))
        #expect(reader.entry(named: "empty-dir")?.kind == .directory)
        #expect(reader.entry(named: "empty-dir")?.mode == 0o700)
        #expect(try reader.verify().isEmpty)
        let streamed = try streamContents(SystemFile.openForReading(path))
        #expect(streamed["名前/ü.txt"] == Array("unicode name\n".utf8))
    }
}
