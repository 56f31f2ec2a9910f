@testable import Checkpack
import CheckpackTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The golden archives in fixtures/golden pin the bytes of format version 2:
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
        try Self.writePlanes(Self.directory + "/planes.ckpk")
        try Self.writeDeep(Self.directory + "/deep.ckpk")
    }

    /// A frame table three levels deep: 37 frames in pages of 4 rows (10
    /// leaves, 3 pages above them, the root), with item starts among them.
    static let deepContent = sampleBytes(37 * 4096 - 100, seed: 41)

    static func writeDeep(_ path: String) throws {
        var options = WriterOptions(frameSize: 4096, threads: 1, overwrite: true)
        options.tableExponent = 2
        let writer = try ArchiveWriter(path: path, options: options)
        try writer.addFile("deep.bin", contents: deepContent, itemBoundaries: [4096 * 5, 4096 * 17])
        try writer.finish()
    }

    @Test func deepIsWrittenByteForByteAndReads() throws {
        let dir = Scratch()
        try Self.writeDeep(dir.sub("deep.ckpk"))
        let path = Self.directory + "/deep.ckpk"
        #expect(readFile(dir.sub("deep.ckpk")) == readFile(path))
        let reader = try ArchiveReader(path: path)
        let entry = try #require(reader.entry(named: "deep.bin"))
        #expect(entry.tableShape.pagesPerLevel == [10, 3, 1])
        #expect(try reader.itemBoundaries(of: entry) == [4096 * 5, 4096 * 17])
        for offset in stride(from: 0, to: Self.deepContent.count, by: 4000) {
            let n = min(300, Self.deepContent.count - offset)
            #expect(try reader.read(entry, offset: UInt64(offset), count: n) == Array(Self.deepContent[offset..<offset + n]))
        }
        #expect(try reader.verify().isEmpty)
        #expect(try streamContents(SystemFile.openForReading(path))["deep.bin"] == Self.deepContent)
    }

    /// Byte-plane frames (transform 1): four element types, both codecs, a
    /// length that is not a multiple of the element size, an untyped item.
    static let planeItems: [(dtype: String, bytes: [UInt8])] = [
        ("-", Array("a header that is not a tensor\n".utf8)),
        ("bfloat16", tensorLikeBytes("bfloat16", count: 9_001, seed: 31)),
        ("float32", tensorLikeBytes("float32", count: 6_000, seed: 32)),
        ("int64", tensorLikeBytes("int64", count: 4_000, seed: 33)),
        ("float16", tensorLikeBytes("float16", count: 5_000, seed: 34)),
    ]

    static func writePlanes(_ path: String) throws {
        var options = WriterOptions(frameSize: 4096, threads: 1, overwrite: true)
        options.planeFrameSize = 4096
        let writer = try ArchiveWriter(path: path, options: options)
        var boundaries: [UInt64] = []
        var content: [UInt8] = []
        for item in planeItems {
            if !content.isEmpty { boundaries.append(UInt64(content.count)) }
            content += item.bytes
        }
        let dtypes = planeItems.map(\.dtype).joined(separator: ","), types = planeItems.map { element($0.dtype) }
        try writer.addFile("model/zstd.bin", contents: content, attributes: [Format.itemDTypesKey: dtypes], itemBoundaries: boundaries,
                           itemTypes: types)
        try writer.addFile("model/zlib.bin", contents: content, attributes: [Format.itemDTypesKey: dtypes], itemBoundaries: boundaries,
                           itemTypes: types, codec: .zlib)
        try writer.finish()
    }

    @Test func planesRead() throws {
        let path = Self.directory + "/planes.ckpk"
        let reader = try ArchiveReader(path: path)
        #expect(reader.requiredFeatures == Format.bytePlanesFeature)
        let content = Self.planeItems.flatMap(\.bytes)
        for (name, codec) in [("model/zstd.bin", Codec.zstd), ("model/zlib.bin", .zlib)] {
            let entry = try #require(reader.entry(named: name))
            #expect(try reader.read(entry) == content)
            let planes = try reader.frames(of: entry).filter { $0.header.transform == 1 }
            #expect(Set(planes.map(\.header.transformParameter)) == [0x102, 0x104, 0x008], "\(name)")
            #expect(planes.allSatisfy { $0.header.codec == codec })
        }
        #expect(try reader.verify().isEmpty)
        #expect(try streamContents(SystemFile.openForReading(path))["model/zlib.bin"] == content)
    }

    @Test func tinyIsWrittenByteForByte() throws {
        let dir = Scratch()
        try Self.writeTiny(dir.sub("tiny.ckpk"))
        let golden = try #require(readFile(Self.directory + "/tiny.ckpk"))
        #expect(readFile(dir.sub("tiny.ckpk")) == golden)
        #expect(golden.count == 409)
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
        #expect(try reader.itemBoundaries(of: zstd) == [1000, 6000])
        #expect(try reader.attribute("dtype", of: zstd) == "bfloat16")
        #expect(try reader.frames(of: zstd).map(\.header.decodedLength) == [1000, 4096, 904, 4000])
        #expect(try Set(reader.entries.flatMap { try reader.frames(of: $0) }.map(\.header.codec)) == Set(Codec.allCases))
        #expect(reader.entry(named: "empty-dir")?.kind == .directory)
        #expect(reader.entry(named: "empty-dir")?.mode == 0o700)
        #expect(try reader.verify().isEmpty)
        let streamed = try streamContents(SystemFile.openForReading(path))
        #expect(streamed["名前/ü.txt"] == Array("unicode name\n".utf8))
    }
}
