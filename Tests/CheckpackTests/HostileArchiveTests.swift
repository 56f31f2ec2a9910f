@testable import Checkpack
import CZstd
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Builds archives record by record with valid checksums, so that each test
/// can break exactly one rule of the format and nothing else.
struct Forge {
    struct Frame {
        var codec: Codec = .stored
        var stored: [UInt8]
        var decodedLength: UInt32? = nil
        var decodedCRC: UInt32? = nil
        var transform: UInt8 = 0
        var parameter: UInt16 = 0
    }

    var requiredFeatures: UInt32 = 0
    var bytes = FileHeader().encoded()
    var index = IndexBuilder()
    /// Index rows to write instead of the true ones (offsets shifted, and so on).
    var frameOffsetShift: [Int: Int64] = [:]

    mutating func entry(_ name: String, kind: EntryKind = .file, frames: [Frame] = [], size: UInt64? = nil) {
        let record = EntryRecord(kind: kind, mode: 0o644, name: name, attributes: []).encoded()
        let recordOffset = UInt64(bytes.count)
        let firstFrame = index.frameCount
        bytes += record
        var offset: UInt64 = 0
        var crc: UInt32 = 0
        for frame in frames {
            let decodedLength = frame.decodedLength ?? UInt32(frame.stored.count)
            let decodedCRC = frame.decodedCRC ?? CRC32C.checksum(frame.stored)
            let header = FrameHeader(codec: frame.codec, transform: frame.transform, transformParameter: frame.parameter, entryOffset: offset, storedLength: UInt32(frame.stored.count),
                                     decodedLength: decodedLength, storedCRC: CRC32C.checksum(frame.stored), decodedCRC: decodedCRC).encoded()
            let number = Int(index.frameCount)
            index.addFrame(archiveOffset: UInt64(Int64(bytes.count) + (frameOffsetShift[number] ?? 0)), header: header)
            bytes += header + frame.stored
            crc = CRC32C.combine(crc, decodedCRC, length: UInt64(decodedLength))
            offset += UInt64(decodedLength)
        }
        let end = EntryEnd(size: size ?? offset, frameCount: UInt64(frames.count), contentCRC: crc, itemBoundaries: []).encoded()
        index.addEntry(recordOffset: recordOffset, firstFrame: firstFrame, record: record, end: end)
        bytes += end
    }

    func finish(patchIndex: (inout [UInt8]) -> Void = { _ in }) -> [UInt8] {
        var indexBytes = index.encoded()
        patchIndex(&indexBytes)
        let trailer = Trailer(indexOffset: UInt64(bytes.count), indexLength: UInt64(indexBytes.count),
                              indexCRC: CRC32C.checksum(indexBytes), requiredFeatures: requiredFeatures).encoded()
        var header = bytes
        header.replaceSubrange(0..<Format.headerSize, with: FileHeader(requiredFeatures: requiredFeatures).encoded())
        return header + indexBytes + trailer
    }
}

func zstdCompress(_ input: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
    let n = ZSTD_compress(&out, out.count, input, input.count, 3)
    return Array(out[..<n])
}

/// Every way of reading must refuse the archive, each with a data error.
func expectRefused(_ bytes: [UInt8], _ what: String, kind: CheckpackError.Kind? = nil) throws {
    var indexError: CheckpackError?
    do {
        let reader = try ArchiveReader(source: MemorySource(bytes))
        for entry in reader.entries { _ = try reader.read(entry) }
        let problems = try reader.verify()
        indexError = problems.first
    } catch let error as CheckpackError {
        indexError = error
    }
    #expect(indexError != nil, "\(what): the index reader accepted it")
    if let indexError {
        #expect(indexError.isDataError, "\(what): \(indexError)")
        if let kind { #expect(indexError.kind == kind, "\(what): \(indexError)") }
    }
    #expect(throws: CheckpackError.self, "\(what): the stream reader accepted it") { try streamContents(MemoryStream(bytes)) }
    // And unpack leaves nothing behind.
    let dir = TemporaryDirectory()
    try writeFile(dir.sub("h.ckpk"), bytes)
    #expect(throws: CheckpackError.self, "\(what): unpack accepted it") { try Unpacker.unpack(archive: dir.sub("h.ckpk"), to: dir.sub("out")) }
    #expect(TreeSnapshot(dir.path).items.keys.sorted() == ["h.ckpk"], "\(what): unpack left \(TreeSnapshot(dir.path).items.keys)")
}

@Suite struct HostileArchiveTests {
    @Test func theForgeMakesValidArchives() throws {
        var forge = Forge()
        forge.entry("d", kind: .directory)
        forge.entry("d/a", frames: [.init(stored: [1, 2, 3]), .init(codec: .zstd, stored: zstdCompress([UInt8](repeating: 9, count: 1000)), decodedLength: 1000, decodedCRC: CRC32C.checksum([UInt8](repeating: 9, count: 1000)))])
        let bytes = forge.finish()
        let reader = try ArchiveReader(source: MemorySource(bytes))
        #expect(try reader.read(try #require(reader.entry(named: "d/a"))) == [1, 2, 3] + [UInt8](repeating: 9, count: 1000))
        #expect(try streamContents(MemoryStream(bytes)).count == 2)
    }

    @Test(arguments: ["..", "a/../b", "/abs", "a/./b", "a//b", "dir/", "back\\slash", "nul\u{0}byte", "new\nline", "ü/\u{7F}"])
    func unsafeNamesAreRefused(name: String) throws {
        var forge = Forge()
        forge.entry(name, frames: [.init(stored: [1])])
        try expectRefused(forge.finish(), "name \(name.debugDescription)", kind: .corrupt)
    }

    @Test func duplicateNamesAndEntriesBelowFilesAreRefused() throws {
        var duplicate = Forge()
        duplicate.entry("a", frames: [.init(stored: [1])])
        duplicate.entry("a", frames: [.init(stored: [2])])
        try expectRefused(duplicate.finish(), "duplicate name")
        var below = Forge()
        below.entry("a", frames: [.init(stored: [1])])
        below.entry("a/b", frames: [.init(stored: [2])])
        try expectRefused(below.finish(), "entry below a file")
        var above = Forge()
        above.entry("a/b", frames: [.init(stored: [2])])
        above.entry("a", frames: [.init(stored: [1])])
        try expectRefused(above.finish(), "file above an entry")
    }

    @Test func framesOverlappingEachOtherOrTheIndexOrPastTheEndAreRefused() throws {
        for (shift, what) in [(-48, "overlapping the previous frame"), (1, "leaving a gap"), (10_000, "past the end of the file")] {
            var forge = Forge()
            forge.frameOffsetShift = [1: Int64(shift)]
            forge.entry("a", frames: [.init(stored: [UInt8](repeating: 1, count: 8)), .init(stored: [UInt8](repeating: 2, count: 8))])
            try expectRefused(forge.finish(), "frame \(what)", kind: .corrupt)
        }
        var intoIndex = Forge()
        intoIndex.frameOffsetShift = [0: 60]
        intoIndex.entry("a", frames: [.init(stored: [1, 2, 3, 4])])
        try expectRefused(intoIndex.finish(), "frame inside the index", kind: .corrupt)
    }

    @Test func anIndexClaimingHugeCountsIsRefusedWithoutAllocating() throws {
        for (field, value, what) in [(8, UInt64(1) << 40, "2^40 entries"), (16, UInt64(1) << 40, "2^40 frames"),
                                     (24, UInt64.max, "an entries section of 2^64-1 bytes"), (16, UInt64.max / 48 + 1, "a frame table overflowing 64 bits")] {
            var forge = Forge()
            forge.entry("a", frames: [.init(stored: [1])])
            let bytes = forge.finish { index in
                withUnsafeBytes(of: value.littleEndian) { index.replaceSubrange(field..<field + 8, with: $0) }
            }
            try expectRefused(bytes, what)
        }
    }

    @Test func decodedLengthsThatLieAreRefused() throws {
        let zeros = [UInt8](repeating: 0, count: 8 << 20)
        let bomb = zstdCompress(zeros)   // 8 MiB of zeros in a few hundred bytes
        // Declared smaller than the real content.
        var small = Forge()
        small.entry("bomb", frames: [.init(codec: .zstd, stored: bomb, decodedLength: 1000, decodedCRC: CRC32C.checksum(zeros[..<1000]))])
        try expectRefused(small.finish(), "zstd frame larger than declared", kind: .corrupt)
        // Declared larger than the real content.
        var large = Forge()
        let few = zstdCompress([UInt8](repeating: 7, count: 100))
        large.entry("short", frames: [.init(codec: .zstd, stored: few, decodedLength: 1 << 20, decodedCRC: 0)])
        try expectRefused(large.finish(), "zstd frame smaller than declared", kind: .corrupt)
        // Beyond the 64 MiB frame limit, whatever the content.
        var beyond = Forge()
        beyond.entry("huge", frames: [.init(codec: .zstd, stored: bomb, decodedLength: UInt32(Format.maxFrameSize) + 1, decodedCRC: 0)])
        try expectRefused(beyond.finish(), "frame beyond the limit", kind: .limitExceeded)
    }

    @Test func aStoredFrameLongerThanItsEntryClaimsIsRefused() throws {
        var forge = Forge()
        forge.entry("a", frames: [.init(stored: [1, 2, 3])], size: 2)
        try expectRefused(forge.finish(), "entry size disagreeing with its frames", kind: .corrupt)
    }

    @Test func unpackNeverWritesThroughASymlinkInTheDestination() throws {
        let dir = TemporaryDirectory()
        makeDirectory(dir.sub("outside"))
        makeDirectory(dir.sub("dest"))
        symlink(dir.sub("outside"), dir.sub("dest/d"))
        let writer = try ArchiveWriter(path: dir.sub("a.ckpk"))
        try writer.addFile("d/x", contents: [1, 2, 3])
        try writer.finish()
        try Unpacker.unpack(archive: dir.sub("a.ckpk"), to: dir.sub("dest"), overwrite: true)
        #expect(TreeSnapshot(dir.sub("outside")).items.isEmpty)
        #expect(readFile(dir.sub("dest/d/x")) == [1, 2, 3])
        var info = stat()
        lstat(dir.sub("dest/d"), &info)
        #expect((info.st_mode & S_IFMT) == S_IFDIR)
    }
}
