import CheckpackTestSupport
import Checkpack
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Several ranks saving one local archive (SharedFile): each writes its
/// segment into its own region of one temporary file; the coordinator closes
/// the gaps and renames the file into place.
@Suite struct SharedFileTests {
    static let partSize = 1 << 20
    static let metadata = (name: ".metadata", bytes: Array("{}".utf8))

    /// Writes each rank's files through its own region sink (two parts each),
    /// then completes the archive at `path`.
    static func save(_ ranks: [[(name: String, bytes: [UInt8])]], to path: String) throws {
        let temporary = try SharedFile.create(beside: path, overwrite: true)
        let records = try ranks.enumerated().map { rank, files in
            let sink = try FileRegionSink(temporary: temporary, region: SharedFile.region(parts: 2 * rank + 1...2 * rank + 2, partSize: partSize))
            let writer = try ArchiveWriter(sink: sink, options: WriterOptions(frameSize: 4096), startsArchive: rank == 0)
            for file in files { try writer.addFile(file.name, contents: file.bytes) }
            return try sink.finish(writer.finishSegment()).encoded()
        }
        try SharedFile.complete(temporary: temporary, path: path, overwrite: true, segments: records.map(SharedFile.Segment.init(decoding:)),
                                files: [metadata], options: WriterOptions())
    }

    static let ranks: [[(name: String, bytes: [UInt8])]] = [
        [("__0_0.distcp", sampleBytes(10_000, seed: 1))],
        [],   // a rank with nothing to save
        [("__2_0.distcp", sampleBytes(30_000, seed: 2, compressible: false)), ("extra", [1, 2, 3])],
        [("__3_0.distcp", [5, 4, 3, 2, 1])],
    ]

    /// ext4 (/tmp here) collapses each gap out of the file; tmpfs (/dev/shm) cannot, so
    /// each segment is moved down instead. Both make the same archive, byte for byte.
    @Test func collapsedAndMovedGapsMakeTheSameArchive() throws {
        let onDisk = Scratch(), inMemory = Scratch(in: "/dev/shm")
        try #require(access(inMemory.path, W_OK) == 0, "no /dev/shm to test the moving path on")
        try Self.save(Self.ranks, to: onDisk.sub("a.ckpk"))
        try Self.save(Self.ranks, to: inMemory.sub("a.ckpk"))
        #expect(onDisk.contents == ["a.ckpk"] && inMemory.contents == ["a.ckpk"])
        let bytes = try #require(readFile(onDisk.sub("a.ckpk")))
        #expect(readFile(inMemory.sub("a.ckpk")) == bytes)
        #expect(bytes.count < 100_000)   // 4 MiB of regions, 45 KB of entries

        let reader = try ArchiveReader(path: onDisk.sub("a.ckpk"))
        let padding = { (gap: Int) in SharedFile.paddingPrefix + String(gap) }
        #expect(reader.entries.map(\.name) == ["__0_0.distcp", padding(2), "__2_0.distcp", "extra", padding(3), "__3_0.distcp", ".metadata"])
        for file in Self.ranks.joined() + [Self.metadata] {
            #expect(try reader.read(try #require(reader.entry(named: file.name))) == file.bytes, "\(file.name)")
        }
        #expect(try reader.verify().isEmpty)
        #expect(try streamContents(MemoryStream(bytes))["extra"] == [1, 2, 3])
    }

    @Test func aRankThatOutgrowsItsRegionFailsAndLeavesNothing() throws {
        let scratch = Scratch()
        let temporary = try SharedFile.create(beside: scratch.sub("a.ckpk"), overwrite: true)
        try {
            let sink = try FileRegionSink(temporary: temporary, region: SharedFile.region(parts: 1...2, partSize: Self.partSize))
            let writer = try ArchiveWriter(sink: sink, options: WriterOptions(codec: .stored), startsArchive: true)
            #expect(errorKind {
                try writer.addFile("big", contents: sampleBytes(Self.partSize, seed: 3))
                return try writer.finishSegment()
            } == .limitExceeded)
        }()
        #expect(scratch.contents == [])   // the failed rank removed the shared file: the save fails everywhere
    }

    @Test func recordsThatOverlapOrAreCutShortAreRefused() throws {
        let scratch = Scratch()
        let temporary = try SharedFile.create(beside: scratch.sub("a.ckpk"), overwrite: true)
        var records: [[UInt8]] = []
        for rank in 0..<2 {
            // Both ranks were given the same region: their segments overlap.
            let sink = try FileRegionSink(temporary: temporary, region: SharedFile.region(parts: 1...2, partSize: Self.partSize))
            let writer = try ArchiveWriter(sink: sink, options: WriterOptions(), startsArchive: rank == 0)
            try writer.addFile("r\(rank)", contents: sampleBytes(1000, seed: UInt64(rank)))
            records.append(try sink.finish(writer.finishSegment()).encoded())
        }
        #expect(errorKind { try SharedFile.Segment(decoding: Array(records[1].dropLast())) } == .corrupt)
        #expect(errorKind { try SharedFile.Segment(decoding: records[1] + [0]) } == .corrupt)
        #expect(errorKind {
            try SharedFile.complete(temporary: temporary, path: scratch.sub("a.ckpk"), overwrite: true,
                                    segments: records.map(SharedFile.Segment.init(decoding:)), files: [], options: WriterOptions())
        } == .corrupt)
        #expect(scratch.contents == [])
    }
}
