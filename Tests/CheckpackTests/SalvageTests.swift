import CheckpackTestSupport
import Checkpack
import Testing

@Suite struct SalvageTests {
    static let files: [(String, [UInt8])] = [
        ("a.bin", sampleBytes(10_000, seed: 1)),
        ("dir/b.bin", sampleBytes(20_000, seed: 2, compressible: false)),
        ("c.bin", sampleBytes(9_000, seed: 3)),
    ]

    func archive(_ dir: Scratch) throws -> [UInt8] {
        let writer = try ArchiveWriter(path: dir.sub("a.ckpk"), options: WriterOptions(frameSize: 4096))
        try writer.addDirectory("dir")
        for (name, bytes) in Self.files { try writer.addFile(name, contents: bytes) }
        try writer.finish()
        return readFile(dir.sub("a.ckpk")) ?? []
    }

    @Test func anIntactArchiveSalvagesCompletely() throws {
        let dir = Scratch()
        _ = try archive(dir)
        let report = try Salvager.salvage(archive: dir.sub("a.ckpk"), to: dir.sub("out"))
        #expect(report.isComplete)
        #expect(report.entries.count == 4)
        for (name, bytes) in Self.files { #expect(readFile(dir.sub("out/" + name)) == bytes) }
    }

    @Test func anAppendedArchiveIsReportedNotSilentlyDropped() throws {
        let dir = Scratch()
        let bytes = try archive(dir)
        try writeFile(dir.sub("two.ckpk"), bytes + bytes)
        let report = try Salvager.salvage(archive: dir.sub("two.ckpk"), to: dir.sub("out"))
        #expect(report.reachedIndex && report.entries.count == 4)
        #expect(report.ignoredTail == UInt64(bytes.count)..<UInt64(2 * bytes.count))
        #expect(!report.isComplete)
    }

    @Test func anArchiveOfAnotherVersionOrUnknownFeaturesIsRefused() throws {
        let dir = Scratch()
        var bytes = try archive(dir)
        bytes[8] = 3   // version 3
        try writeFile(dir.sub("v3.ckpk"), bytes)
        #expect(errorKind { try Salvager.salvage(archive: dir.sub("v3.ckpk"), to: dir.sub("out3")) } == .unsupported)
        bytes[8] = 2
        bytes[15] = 0x80   // an unknown required feature
        try writeFile(dir.sub("f.ckpk"), bytes)
        #expect(errorKind { try Salvager.salvage(archive: dir.sub("f.ckpk"), to: dir.sub("outf")) } == .unsupported)
    }

    @Test func aTruncatedArchiveGivesBackItsCompleteEntriesAndThePrefixOfTheCutOne() throws {
        let dir = Scratch()
        let bytes = try archive(dir)
        let reader = try ArchiveReader(path: dir.sub("a.ckpk"))
        let cut = try #require(reader.entry(named: "dir/b.bin"))
        // Cut inside b.bin's third frame: a.bin is whole, b.bin has two frames, c.bin is gone.
        let third = try reader.frames(of: cut)[2]
        try writeFile(dir.sub("cut.ckpk"), Array(bytes[..<Int(third.archiveOffset + 100)]))
        let report = try Salvager.salvage(archive: dir.sub("cut.ckpk"), to: dir.sub("out"))
        #expect(!report.isComplete && !report.reachedIndex)
        #expect(readFile(dir.sub("out/a.bin")) == Self.files[0].1)
        #expect(readFile(dir.sub("out/dir/b.bin")) == Array(Self.files[1].1[..<8192]))
        #expect(report.entries.map(\.name) == ["dir", "a.bin", "dir/b.bin"])
        #expect(report.entries[1].outcome == .complete)
        guard case .partial = report.entries[2].outcome else { Issue.record("b.bin should be partial"); return }
    }

    @Test func damageInTheMiddleLosesOnlyWhatItHits() throws {
        let dir = Scratch()
        var bytes = try archive(dir)
        let reader = try ArchiveReader(path: dir.sub("a.ckpk"))
        let hit = try #require(reader.entry(named: "a.bin"))
        let frame = try reader.frames(of: hit)[1]
        for i in 0..<64 { bytes[Int(frame.archiveOffset) + 50 + i] ^= 0x5A }
        // And the index is gone too.
        try writeFile(dir.sub("bad.ckpk"), Array(bytes[..<Int(reader.index.recordsEnd)]))
        let report = try Salvager.salvage(archive: dir.sub("bad.ckpk"), to: dir.sub("out"))
        #expect(readFile(dir.sub("out/a.bin")) == Array(Self.files[0].1[..<4096]))
        #expect(readFile(dir.sub("out/dir/b.bin")) == Self.files[1].1)
        #expect(readFile(dir.sub("out/c.bin")) == Self.files[2].1)
        #expect(report.damagedRanges.count == 1)
        #expect(report.entries.filter { $0.outcome == .complete }.map(\.name) == ["dir", "dir/b.bin", "c.bin"])
    }
}
