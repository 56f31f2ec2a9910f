@testable import Checkpack
import CheckpackTestSupport
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
        var startsItem = false
        /// An entry offset other than the true one.
        var entryOffset: UInt64? = nil
    }

    var requiredFeatures: UInt32 = 0
    /// Pages of 2^tableExponent rows: small values make deep tables from few frames.
    var tableExponent: UInt8 = Format.defaultTableExponent
    var bytes = FileHeader().encoded()
    var index = IndexBuilder()
    /// Rewrites the n-th page written (its bytes without the CRC, which is then recomputed).
    var patchPage: [Int: (inout [UInt8]) -> Void] = [:]
    /// Leaves out the n-th page written.
    var dropPage: Int? = nil
    /// Rewrites an entry's index row.
    var patchRow: ((inout IndexRow) -> Void)? = nil
    private(set) var pagesWritten = 0

    mutating func entry(_ name: String, kind: EntryKind = .file, frames: [Frame] = [], size: UInt64? = nil) {
        let record = EntryRecord(kind: kind, mode: 0o644, name: name, attributes: [], tableExponent: tableExponent)
        let recordBytes = record.encoded()
        let recordOffset = UInt64(bytes.count)
        bytes += recordBytes
        var table = FrameTableBuilder(exponent: tableExponent, entryRecordLength: recordBytes.count)
        var offset: UInt64 = 0
        var crc: UInt32 = 0
        var kinds: UInt8 = 0
        for frame in frames {
            let decodedLength = frame.decodedLength ?? UInt32(frame.stored.count)
            let decodedCRC = frame.decodedCRC ?? CRC32C.checksum(frame.stored)
            let header = FrameHeader(codec: frame.codec, transform: frame.transform, transformParameter: frame.parameter,
                                     entryOffset: frame.entryOffset ?? offset, storedLength: UInt32(frame.stored.count),
                                     decodedLength: decodedLength, storedCRC: CRC32C.checksum(frame.stored), decodedCRC: decodedCRC,
                                     startsItem: frame.startsItem)
            bytes += header.encoded() + frame.stored
            for page in table.add(header) { append(page) }
            crc = CRC32C.combine(crc, decodedCRC, length: UInt64(decodedLength))
            offset += UInt64(decodedLength)
            kinds |= FrameKinds.of(header)
        }
        for page in table.finish() { append(page) }
        let end = EntryEnd(size: size ?? offset, frameCount: UInt64(frames.count), contentCRC: crc)
        var row = IndexRow(recordOffset: recordOffset, endOffset: UInt64(bytes.count), size: size ?? offset, frameCount: UInt64(frames.count),
                           contentCRC: crc, recordCRC: ByteReader.u32(recordBytes.suffix(4)), attributesLength: 0, mode: 0o644, kind: kind,
                           tableExponent: tableExponent, frameKinds: kinds, name: Array(name.utf8))
        patchRow?(&row)
        bytes += end.encoded()
        index.add(row)
    }

    private mutating func append(_ page: [UInt8]) {
        var body = Array(page.dropLast(4))
        patchPage[pagesWritten]?(&body)
        pagesWritten += 1
        if dropPage == pagesWritten - 1 { return }
        bytes += body
        bytes += withUnsafeBytes(of: CRC32C.checksum(body).littleEndian, Array.init)
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

/// Writes a little-endian u64 into `bytes` at `at`.
func poke(_ bytes: inout [UInt8], _ at: Int, _ value: UInt64) {
    withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(at..<at + 8, with: $0) }
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
    #expect(thrownError { try streamContents(MemoryStream(bytes)) }?.isDataError == true, "\(what): the stream reader accepted it")
    // And unpack leaves nothing behind.
    let dir = Scratch()
    try writeFile(dir.sub("h.ckpk"), bytes)
    #expect(thrownError { try Unpacker.unpack(archive: dir.sub("h.ckpk"), to: dir.sub("out")) }?.isDataError == true, "\(what): unpack accepted it")
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

    @Test func namesCompareAsBytesNotAsUnicodeText() throws {
        let nfc = "caf\u{E9}", nfd = "cafe\u{301}"   // equal as Swift Strings, two files on Linux
        let dir = Scratch()
        let writer = try ArchiveWriter(path: dir.sub("a.ckpk"))
        try writer.addFile(nfc, contents: [1])
        try writer.addFile(nfd, contents: [2])
        try writer.finish()
        let reader = try ArchiveReader(path: dir.sub("a.ckpk"))
        #expect(try reader.read(try #require(reader.entry(named: nfc))) == [1])
        #expect(try reader.read(try #require(reader.entry(named: nfd))) == [2])
        #expect(try reader.verify().isEmpty)
        try Unpacker.unpack(archive: dir.sub("a.ckpk"), to: dir.sub("out"))
        #expect(readFile(dir.sub("out/") + nfc) == [1])
        #expect(readFile(dir.sub("out/") + nfd) == [2])
        // A combining mark right after "/" does not hide the file above the entry.
        var below = Forge()
        below.entry("f", frames: [.init(stored: [1])])
        below.entry("f/\u{301}g.txt", frames: [.init(stored: [2])])
        try expectRefused(below.finish(), "entry below a file, behind a combining mark")
    }

    @Test func entriesOverlappingEachOtherOrTheIndexOrPastTheEndAreRefused() throws {
        for (shift, what) in [(-8, "overlapping the previous entry"), (1, "leaving a gap"), (10_000, "past the end of the file")] {
            var forge = Forge()
            forge.entry("a", frames: [.init(stored: [UInt8](repeating: 1, count: 8))])
            forge.patchRow = { $0.recordOffset = UInt64(Int64($0.recordOffset) + Int64(shift)) }
            forge.entry("b", frames: [.init(stored: [UInt8](repeating: 2, count: 8))])
            try expectRefused(forge.finish(), "entry \(what)", kind: .corrupt)
        }
        var intoIndex = Forge()
        intoIndex.patchRow = { $0.endOffset += 60 }
        intoIndex.entry("a", frames: [.init(stored: [1, 2, 3, 4])])
        try expectRefused(intoIndex.finish(), "entry end inside the index", kind: .corrupt)
    }

    /// An entry of `count` one-byte frames in pages of 4 rows: a table three levels deep.
    static func deepForge(frames count: Int = 37, _ setUp: (inout Forge) -> Void = { _ in }) -> [UInt8] {
        var forge = Forge()
        forge.tableExponent = 2
        setUp(&forge)
        forge.entry("deep", frames: (0..<count).map { .init(stored: [UInt8(truncatingIfNeeded: $0)]) })
        forge.patchRow = nil
        forge.entry("after", frames: [.init(stored: [7])])
        return forge.finish()
    }

    @Test func deepTablesReadEverywhere() throws {
        let bytes = Self.deepForge()
        let reader = try ArchiveReader(source: MemorySource(bytes))
        let entry = try #require(reader.entry(named: "deep"))
        #expect(entry.tableShape.pagesPerLevel == [10, 3, 1])
        for offset in [0, 1, 3, 4, 15, 16, 17, 36] {
            #expect(try reader.read(entry, offset: UInt64(offset), count: 1) == [UInt8(offset)])
        }
        #expect(try reader.read(entry) == (0..<37).map(UInt8.init))
        #expect(try reader.verify().isEmpty)
        // A read reads only the pages on its path: the root (3 rows), level-1 page 2 (2 rows), leaf 9 (1 row).
        let fresh = try ArchiveReader(source: MemorySource(bytes))
        #expect(try fresh.read(try #require(fresh.entry(named: "deep")), offset: 36, count: 1) == [36])
        #expect(fresh.tableBytesRead == (24 + 3 * 16) + (24 + 2 * 16) + (24 + 8))
        #expect(try streamContents(MemoryStream(bytes))["deep"] == (0..<37).map(UInt8.init))
    }

    @Test func forgedFrameTablesAreRefused() throws {
        // Pages in the order written: leaves 0-3, then level-1 page 0, leaves 4-7, level-1 page 1, ...
        // A page body: 20-byte head (level at 4, row count at 8, first offset at 12), then rows (16 bytes above the leaves).
        let child = Format.pageHeaderSize
        let cases: [(String, Int, (inout [UInt8]) -> Void)] = [
            ("a child outside its entry", 4, { poke(&$0, child, 1 << 40) }),
            ("a child before the entry's data", 4, { poke(&$0, child, 0) }),
            ("a child pointing at its parent (a cycle)", 4, { poke(&$0, child + 16 * 3, 0x1000) }),
            ("two rows naming one child (overlap)", 4, { $0.replaceSubrange(child + 16..<child + 24, with: Array($0[child..<child + 8])) }),
            ("child offsets out of order", 4, { poke(&$0, child + 16 + 8, 100) }),
            ("a leaf whose lengths do not add up", 1, { $0[child + 4] = 2 }),
            ("a leaf starting at the wrong entry offset", 1, { poke(&$0, 12, 5) }),
            ("a page with the wrong row count", 0, { $0[8] = 3 }),
            ("a page of the wrong level", 0, { $0[4] = 1 }),
            ("a first frame marked as an item start", 0, { $0[child + 7] |= 0x80 }),
        ]
        for (what, page, patch) in cases {
            let bytes = Self.deepForge { $0.patchPage = [page: patch] }
            try expectRefused(bytes, what)
        }
    }

    @Test func tablesLongerThanTheirEntryAllowsAreRefused() throws {
        for (frames, what) in [(UInt64(1) << 40, "2^40 frames"), (38, "one frame more than written"), (36, "one frame fewer")] {
            let bytes = Self.deepForge { forge in forge.patchRow = { $0.frameCount = frames } }
            try expectRefused(bytes, what)
        }
    }

    /// One validator serves every path that reads records: the index reader
    /// (with verify), the stream reader and salvage give the same verdict on
    /// each of these archives, broken only in their records.
    @Test func everyReaderGivesTheSameVerdictOnBrokenRecords() throws {
        let frames: [Forge.Frame] = (0..<9).map { .init(stored: [UInt8](repeating: UInt8($0), count: 10)) }
        func deep(_ setUp: (inout Forge, inout [Forge.Frame]) -> Void) -> [UInt8] {
            var forge = Forge()
            forge.tableExponent = 1
            var entryFrames = frames
            setUp(&forge, &entryFrames)
            forge.entry("e", frames: entryFrames)
            return forge.finish()
        }
        let cases: [(String, [UInt8])] = [
            ("a page that differs from its frames", deep { forge, _ in forge.patchPage = [2: { $0[20] ^= 1 }] }),
            ("a missing page", deep { forge, _ in forge.dropPage = 0 }),
            ("a frame at the wrong entry offset", deep { _, frames in frames[3].entryOffset = 31 }),
            ("an item start that the table does not know", deep { forge, frames in
                frames[4].startsItem = true
                forge.patchPage = [3: { $0[20 + 7] &= 0x7F }]   // leaf 2 (frames 4 and 5): clear the flag again
            }),
            ("the first frame marked as an item start", deep { _, frames in frames[0].startsItem = true }),
            ("byte planes without the feature bit", deep { _, frames in
                let floats = tensorLikeBytes("bfloat16", count: 4000, seed: 1)
                let planes = floats.withUnsafeBytes { try? BytePlanes.encode($0, element: element("bfloat16")!, codec: .zstd, level: 3) }
                frames[8] = .init(codec: .zstd, stored: planes!, decodedLength: UInt32(floats.count), decodedCRC: CRC32C.checksum(floats),
                                  transform: 1, parameter: element("bfloat16")!.parameter)
            }),
        ]
        let dir = Scratch()
        for (what, bytes) in [("a sound archive", deep { _, _ in })] + cases {
            let sound = what == "a sound archive"
            var indexVerdict = true
            do {
                let reader = try ArchiveReader(source: MemorySource(bytes))
                for entry in reader.entries { _ = try reader.read(entry) }
                indexVerdict = try reader.verify().isEmpty
            } catch {
                indexVerdict = false
            }
            let streamVerdict = (try? streamContents(MemoryStream(bytes))) != nil
            try writeFile(dir.sub("a.ckpk"), bytes)
            let report = try Salvager.salvage(archive: dir.sub("a.ckpk"), to: dir.sub("out"), overwrite: true)
            #expect(indexVerdict == sound, "\(what): index reader")
            #expect(streamVerdict == sound, "\(what): stream reader")
            #expect(report.isComplete == sound, "\(what): salvage")
        }
    }

    @Test func aBytePlaneFrameWithoutAWholeElementIsRefusedEverywhere() throws {
        // Decoded length 7, element size 8: no element to split (spec 5.1), whatever the stored bytes say.
        var forge = Forge()
        forge.requiredFeatures = Format.bytePlanesFeature
        forge.entry("t", frames: [.init(codec: .zstd, stored: [1, 2, 3, 4, 5, 6], decodedLength: 7, decodedCRC: 0, transform: 1, parameter: 8)])
        try expectRefused(forge.finish(), "a byte-plane frame of 7 bytes with 8-byte elements", kind: .corrupt)
    }

    @Test func anIndexClaimingHugeCountsIsRefusedWithoutAllocating() throws {
        for (value, what) in [(UInt64(1) << 40, "2^40 entries"), (UInt64.max, "2^64-1 entries")] {
            var forge = Forge()
            forge.entry("a", frames: [.init(stored: [1])])
            let bytes = forge.finish { index in poke(&index, 8, value) }
            try expectRefused(bytes, what)
        }
        var huge = Forge()
        huge.patchRow = { $0.frameCount = UInt64.max; $0.size = UInt64.max }
        huge.entry("a", frames: [.init(stored: [1])])
        try expectRefused(huge.finish(), "a frame table overflowing 64 bits")
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
        let dir = Scratch()
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
