import CheckpackTestSupport
import Checkpack
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite struct RoundTripTests {
    static let frame = 4096

    /// A tree with empty files and directories, nested and unicode names, and
    /// files of 0, 1, frame-1, frame and frame+1 bytes.
    static func makeTree(_ root: String) throws {
        makeDirectory(root)
        makeDirectory(root + "/empty-dir", mode: 0o700)
        makeDirectory(root + "/nested")
        makeDirectory(root + "/nested/deeper")
        makeDirectory(root + "/nested/deeper/deepest", mode: 0o555)
        makeDirectory(root + "/ünïcödé 名前")
        try writeFile(root + "/empty", [])
        try writeFile(root + "/one", [42], mode: 0o600)
        try writeFile(root + "/frame-minus-1", sampleBytes(frame - 1, seed: 1))
        try writeFile(root + "/frame", sampleBytes(frame, seed: 2), mode: 0o755)
        try writeFile(root + "/frame-plus-1", sampleBytes(frame + 1, seed: 3))
        try writeFile(root + "/random", sampleBytes(5 * frame + 17, seed: 4, compressible: false))
        try writeFile(root + "/nested/deeper/file.bin", sampleBytes(3 * frame, seed: 5), mode: 0o640)
        try writeFile(root + "/ünïcödé 名前/データ.txt", Array("grüße\n".utf8))
        chmod(root + "/nested/deeper/deepest", 0o555)
    }

    @Test(arguments: Codec.allCases)
    func packUnpackRestoresTheTree(codec: Codec) throws {
        let dir = Scratch()
        try Self.makeTree(dir.sub("src"))
        let options = WriterOptions(codec: codec, frameSize: Self.frame, threads: 3)
        let packed = try Packer.pack(directory: dir.sub("src"), to: dir.sub("a.ckpk"), options: options)
        #expect(packed.files == 8)
        #expect(packed.directories == 5)
        let unpacked = try Unpacker.unpack(archive: dir.sub("a.ckpk"), to: dir.sub("out"))
        #expect(unpacked.files == packed.files && unpacked.bytes == packed.bytes)
        #expect(TreeSnapshot(dir.sub("out")) == TreeSnapshot(dir.sub("src")))
        #expect(TreeSnapshot(dir.sub("out")).items.count == 13)

        let reader = try ArchiveReader(path: dir.sub("a.ckpk"))
        #expect(try reader.verify().isEmpty)
        #expect(reader.entry(named: "frame-plus-1")?.frameCount == 2)
        #expect(reader.entry(named: "frame")?.frameCount == 1)
        #expect(reader.entry(named: "empty")?.frameCount == 0)
    }

    @Test func singleThreadAndManyThreadsWriteTheSameBytes() throws {
        let dir = Scratch()
        try Self.makeTree(dir.sub("src"))
        try Packer.pack(directory: dir.sub("src"), to: dir.sub("1.ckpk"), options: WriterOptions(frameSize: Self.frame, threads: 1))
        try Packer.pack(directory: dir.sub("src"), to: dir.sub("4.ckpk"), options: WriterOptions(frameSize: Self.frame, threads: 4))
        #expect(readFile(dir.sub("1.ckpk")) == readFile(dir.sub("4.ckpk")))
    }

    @Test func unpackRefusesAnExistingDestinationUnlessForced() throws {
        let dir = Scratch()
        try Self.makeTree(dir.sub("src"))
        try Packer.pack(directory: dir.sub("src"), to: dir.sub("a.ckpk"))
        makeDirectory(dir.sub("out"))
        try writeFile(dir.sub("out/keep"), [1, 2, 3])
        #expect(errorKind { try Unpacker.unpack(archive: dir.sub("a.ckpk"), to: dir.sub("out")) } == .alreadyExists)
        #expect(readFile(dir.sub("out/keep")) == [1, 2, 3])
        try Unpacker.unpack(archive: dir.sub("a.ckpk"), to: dir.sub("out"), overwrite: true)
        #expect(TreeSnapshot(dir.sub("out")) == TreeSnapshot(dir.sub("src")))
        // A file in the way is replaced too; nothing of the old trees or the staging is left beside them.
        try writeFile(dir.sub("file-out"), [7])
        try Unpacker.unpack(archive: dir.sub("a.ckpk"), to: dir.sub("file-out"), overwrite: true)
        #expect(TreeSnapshot(dir.sub("file-out")) == TreeSnapshot(dir.sub("src")))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["a.ckpk", "file-out", "out", "src"])
    }

    @Test func packRefusesAnExistingArchiveUnlessForced() throws {
        let dir = Scratch()
        try Self.makeTree(dir.sub("src"))
        try writeFile(dir.sub("a.ckpk"), [9])
        #expect(errorKind { try Packer.pack(directory: dir.sub("src"), to: dir.sub("a.ckpk")) } == .alreadyExists)
        #expect(readFile(dir.sub("a.ckpk")) == [9])
        try Packer.pack(directory: dir.sub("src"), to: dir.sub("a.ckpk"), options: WriterOptions(overwrite: true))
        #expect(try ArchiveReader(path: dir.sub("a.ckpk")).entries.count == 13)
    }

    @Test func writerFromMemoryPiecesAndBoundaries() throws {
        let dir = Scratch()
        let path = dir.sub("m.ckpk")
        let writer = try ArchiveWriter(path: path, options: WriterOptions(frameSize: 4096))
        let a = sampleBytes(10_000, seed: 9)
        try writer.addFile("items.bin", contents: a, attributes: ["dtype": "bfloat16", "format": "raw"],
                           itemBoundaries: [100, 5000], codec: .zlib, level: 9)
        try writer.beginFile("pieces.bin", mode: 0o600)
        try writer.write(a[0..<10])
        try writer.write(a[10..<7000])
        try writer.markItemBoundary()
        try writer.write(a[7000...])
        try writer.markItemBoundary()   // at the end: dropped, there is no item after it
        try writer.endFile()
        try writer.addDirectory("dir/sub", mode: 0o700)
        try writer.finish()

        let reader = try ArchiveReader(path: path)
        let items = try #require(reader.entry(named: "items.bin"))
        #expect(try reader.itemBoundaries(of: items) == [100, 5000])
        #expect(try reader.attribute("dtype", of: items) == "bfloat16")
        #expect(try reader.frames(of: items).map(\.header.entryOffset) == [0, 100, 4196, 5000, 9096])
        #expect(try reader.read(items) == a)
        let pieces = try #require(reader.entry(named: "pieces.bin"))
        #expect(try reader.itemBoundaries(of: pieces) == [7000])
        #expect(pieces.mode == 0o600)
        #expect(try reader.read(pieces) == a)
        #expect(try reader.verify().isEmpty)
        #expect(try streamContents(MemoryStream(readFile(path) ?? []))["pieces.bin"] == a)
    }

    @Test func writerRejectsBadArgumentsAndStaysUsable() throws {
        let dir = Scratch()
        let path = dir.sub("w.ckpk")
        let writer = try ArchiveWriter(path: path)
        for bad in ["", "/abs", "a/../b", "./a", "a//b", "a/", "back\\slash", "nul\u{0}x", "..", String(repeating: "x", count: 256)] {
            #expect(errorKind { try writer.addFile(bad, contents: [1]) } == .invalidArgument, "\(bad)")
        }
        try writer.addFile("ok", contents: [1])
        #expect(errorKind { try writer.addFile("ok", contents: [2]) } == .invalidArgument)
        #expect(errorKind { try writer.addFile("ok/child", contents: [2]) } == .invalidArgument)
        #expect(errorKind { try writer.addFile("x", contents: [2], level: 99) } == .invalidArgument)
        try writer.finish()
        #expect(try ArchiveReader(path: path).entries.map(\.name) == ["ok"])
    }

    @Test func abandonedOrFailedWriterLeavesNothing() throws {
        let dir = Scratch()
        do {
            let writer = try ArchiveWriter(path: dir.sub("gone.ckpk"))
            try writer.addFile("a", contents: sampleBytes(100_000, seed: 1))
        }
        let cancelled = try ArchiveWriter(path: dir.sub("cancelled.ckpk"))
        try cancelled.addFile("a", contents: [1, 2])
        cancelled.cancel()
        #expect(errorKind { try cancelled.finish() } == .invalidArgument)
        #expect(TreeSnapshot(dir.path).items.isEmpty, "left: \(TreeSnapshot(dir.path).items.keys)")
    }

    @Test func packRefusesWhatItCannotStore() throws {
        let dir = Scratch()
        makeDirectory(dir.sub("src"))
        makeDirectory(dir.sub("target"))
        symlink(dir.sub("target"), dir.sub("src/link"))
        #expect(errorKind { try Packer.pack(directory: dir.sub("src"), to: dir.sub("a.ckpk")) } == .invalidArgument)
        unlink(dir.sub("src/link"))
        try writeFile(dir.sub("target/f"), [7])
        symlink(dir.sub("target/f"), dir.sub("src/filelink"))
        try Packer.pack(directory: dir.sub("src"), to: dir.sub("a.ckpk"))
        let reader = try ArchiveReader(path: dir.sub("a.ckpk"))
        #expect(try reader.read(try #require(reader.entry(named: "filelink"))) == [7])
        #expect(!FileSystemHasLeftovers(dir.path))
    }

    @Test func aFileThatChangedSinceItWasListedIsAnError() throws {
        let dir = Scratch()
        for (size, listed) in [(1000, 900), (1000, 1100), (10_000, 9000), (10_000, 11_000)] {   // one frame, and several
            try writeFile(dir.sub("f"), sampleBytes(size, seed: 3))
            let writer = try ArchiveWriter(path: dir.sub("a.ckpk"), options: WriterOptions(frameSize: 4096, overwrite: true))
            let changed = errorKind {
                try writer.addFile("f", fromPath: dir.sub("f"), mode: 0o644, size: UInt64(listed))
                try writer.finish()
            }
            #expect(changed == .io(EIO), "\(size) listed as \(listed)")
            #expect(!FileManager.default.fileExists(atPath: dir.sub("a.ckpk")))
        }
    }

    /// A file replaced by another one of the same size between the walk and its
    /// read (small: read on a worker; large: on the caller's thread) is an error.
    @Test func aFileReplacedAfterTheWalkIsAnError() throws {
        for size in [1000, 10 << 20] {
            let dir = Scratch()
            makeDirectory(dir.sub("src"))
            try writeFile(dir.sub("src/f"), sampleBytes(size, seed: 1))
            try writeFile(dir.sub("other"), sampleBytes(size, seed: 2))
            let error = try #require(throws: CheckpackError.self) {
                try Packer.pack(directory: dir.sub("src"), into: { _ in
                    // The walk is done; swap the file it listed for another.
                    #expect(rename(dir.sub("other"), dir.sub("src/f")) == 0)
                    return try FileSink(path: dir.sub("a.ckpk"), overwrite: false)
                })
            }
            #expect(error.description.contains("replaced"), "\(error)")
            #expect(!FileManager.default.fileExists(atPath: dir.sub("a.ckpk")))
        }
    }

    @Test func aFifoOrADeviceWhereAFileWasListedIsRefusedWithoutHanging() throws {
        let dir = Scratch()
        #expect(mkfifo(dir.sub("fifo"), 0o644) == 0)
        symlink("/dev/zero", dir.sub("zero"))
        for name in ["fifo", "zero"] {
            for listed: UInt64 in [100, 100 << 20] {   // read on a worker thread, and on the caller's
                let writer = try ArchiveWriter(path: dir.sub("a.ckpk"), options: WriterOptions(overwrite: true))
                let refused = thrownError {
                    try writer.addFile(name, fromPath: dir.sub(name), mode: 0o644, size: listed)
                    try writer.finish()
                }
                #expect(refused != nil && refused?.isDataError == false, "\(name): \(String(describing: refused))")
            }
        }
    }

    @Test func parentsWithoutEntriesGetTheModeMkdirGives() throws {
        let dir = Scratch()
        let writer = try ArchiveWriter(path: dir.sub("a.ckpk"))
        try writer.addFile("implied/deeper/f.txt", contents: [1])
        try writer.addDirectory("named", mode: 0o750)
        try writer.finish()
        try Unpacker.unpack(archive: dir.sub("a.ckpk"), to: dir.sub("out"))
        // The umask, read without changing it (other tests run alongside).
        let status = String(decoding: readFile("/proc/self/status") ?? [], as: UTF8.self)
        let mask = try #require(status.split(separator: "\n").first { $0.hasPrefix("Umask:") }
            .flatMap { UInt32($0.split(separator: "\t").last ?? "", radix: 8) })
        let implied = 0o777 & ~mask
        for (path, mode) in [("implied", implied), ("implied/deeper", implied), ("named", 0o750)] {
            var info = stat()
            #expect(stat(dir.sub("out/" + path), &info) == 0)
            #expect(UInt32(info.st_mode) & 0o7777 == mode, "\(path): 0o\(String(UInt32(info.st_mode) & 0o7777, radix: 8))")
        }
    }

    @Test func zeroRunsComeBackAsHoles() throws {
        let dir = Scratch()
        let block = 64 << 10
        // Data, 4 blocks of zeros (a hole), data, then zeros to the end (a hole that sets the size).
        let content = [UInt8](repeating: 7, count: 1000) + [UInt8](repeating: 0, count: 5 * block - 1000) + [UInt8](repeating: 9, count: block)
            + [UInt8](repeating: 0, count: 3 * block)
        let writer = try ArchiveWriter(path: dir.sub("a.ckpk"))
        try writer.addFile("sparse.bin", contents: content)
        try writer.finish()
        try Unpacker.unpack(archive: dir.sub("a.ckpk"), to: dir.sub("out"))
        #expect(readFile(dir.sub("out/sparse.bin")) == content)
        var info = stat()
        #expect(stat(dir.sub("out/sparse.bin"), &info) == 0)
        #expect(Int(info.st_size) == content.count)
        #expect(Int(info.st_blocks) * 512 <= 3 * block, "allocated \(info.st_blocks * 512) of \(content.count) bytes")
    }

    @Test func emptyArchive() throws {
        let bytes = try buildArchive { _ in }
        #expect(bytes.count == 80)
        let reader = try ArchiveReader(source: MemorySource(bytes))
        #expect(reader.entries.isEmpty)
        #expect(try streamContents(MemoryStream(bytes)).isEmpty)
    }
}

/// True when a temporary file or staging directory of Checkpack is left in `path`.
func FileSystemHasLeftovers(_ path: String) -> Bool {
    TreeSnapshot(path).items.keys.contains {
        $0.contains(".ckpk-tmp-") || $0.contains(".ckpk-unpack-") || $0.contains(".ckpk-old-") || $0.contains(".ckpk-part-")
    }
}

@Suite struct AppendTests {
    @Test func joiningArchivesCopiesRecordsWithoutRecompressing() throws {
        let dir = Scratch()
        let a = sampleBytes(20_000, seed: 1), b = sampleBytes(9_000, seed: 2)
        for (name, bytes) in [("p0", a), ("p1", b)] {
            let part = try ArchiveWriter(path: dir.sub(name + ".ckpk"), options: WriterOptions(frameSize: 4096))
            try part.addFile("\(name)/data.bin", contents: bytes, itemBoundaries: [100])
            try part.finish()
        }
        let joined = try ArchiveWriter(path: dir.sub("joined.ckpk"))
        try joined.addFile("first", contents: [1, 2, 3])
        try joined.appendEntries(of: ArchiveReader(path: dir.sub("p0.ckpk")))
        try joined.appendEntries(of: ArchiveReader(path: dir.sub("p1.ckpk")))
        try joined.addFile("last", contents: [4])
        #expect(errorKind { try joined.appendEntries(of: ArchiveReader(path: dir.sub("p1.ckpk"))) } == .invalidArgument)
        try joined.finish()

        let reader = try ArchiveReader(path: dir.sub("joined.ckpk"))
        #expect(reader.entries.map(\.name) == ["first", "p0/data.bin", "p1/data.bin", "last"])
        #expect(try reader.read(try #require(reader.entry(named: "p0/data.bin"))) == a)
        #expect(try reader.read(try #require(reader.entry(named: "p1/data.bin"))) == b)
        #expect(try reader.itemBoundaries(of: try #require(reader.entry(named: "p0/data.bin"))) == [100])
        #expect(try reader.verify().isEmpty)
        #expect(try streamContents(SystemFile.openForReading(dir.sub("joined.ckpk")))["last"] == [4])
    }
}

@Suite struct SegmentTests {
    /// A segment of `files`, written as a rank writes its share of an upload.
    static func segment(_ files: [(String, [UInt8])], startsArchive: Bool) throws -> (bytes: [UInt8], segment: ArchiveWriter.Segment) {
        let sink = MemorySink(name: "segment")
        let writer = try ArchiveWriter(sink: sink, options: WriterOptions(frameSize: 4096), startsArchive: startsArchive)
        for (name, bytes) in files { try writer.addFile(name, contents: bytes) }
        let segment = try writer.finishSegment()
        #expect(segment.length == UInt64(sink.bytes.count))
        return (sink.bytes, segment)
    }

    @Test func segmentsWrittenApartJoinIntoOneArchive() throws {
        let a = try Self.segment([("__0_0.distcp", sampleBytes(10_000, seed: 1))], startsArchive: true)
        let b = try Self.segment([("__1_0.distcp", sampleBytes(20_000, seed: 2)), ("extra", [1, 2, 3])], startsArchive: false)
        let c = try Self.segment([(".metadata", Array("{}".utf8))], startsArchive: false)
        let (header, end) = try SegmentJoin.close([a.segment, b.segment, c.segment])
        var bytes = a.bytes + b.bytes + c.bytes + end
        bytes.replaceSubrange(0..<header.count, with: header)
        let reader = try ArchiveReader(source: MemorySource(bytes))
        #expect(reader.entries.map(\.name) == ["__0_0.distcp", "__1_0.distcp", "extra", ".metadata"])
        #expect(try reader.read(try #require(reader.entry(named: "__1_0.distcp"))) == sampleBytes(20_000, seed: 2))
        #expect(try reader.verify().isEmpty)
        #expect(try streamContents(MemoryStream(bytes))["extra"] == [1, 2, 3])
    }

    @Test func segmentsThatDoNotTileOrRepeatANameAreRefused() throws {
        let a = try Self.segment([("a", [1])], startsArchive: true)
        let b = try Self.segment([("b", [2])], startsArchive: false)
        // Out of order: the first segment must be the one with the file header.
        #expect(thrownError { try SegmentJoin.close([b.segment, a.segment]) }?.isDataError == true)
        // A length that does not match the rows: a gap.
        var longer = a.segment
        longer.length += 1
        #expect(thrownError { try SegmentJoin.close([longer, b.segment]) }?.isDataError == true)
        // The same name from two ranks.
        let again = try Self.segment([("a", [3])], startsArchive: false)
        #expect(errorKind { try SegmentJoin.close([a.segment, again.segment]) } == .corrupt)
    }
}
