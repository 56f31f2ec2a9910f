/// The rules for one entry's record sequence (spec sections 4 and 9), in one
/// place: every path that meets records in order — the writer, the stream
/// reader, verify and salvage — feeds them through this type, so that all of
/// them accept and refuse exactly the same archives.
///
/// Use: `accept(_:)` each frame header; after each frame and while
/// `expectedPages` is not empty, the next record must be exactly the first
/// expected page (`acceptPage`); `finishFrames()` before the entry end record,
/// whose pages must come next too; then `close(_:)` with the entry end record.
struct EntryValidator {
    let record: EntryRecord
    /// Required feature bits of the archive.
    let features: UInt32
    private var table: FrameTableBuilder
    private(set) var size: UInt64 = 0
    private(set) var frameCount: UInt64 = 0
    private(set) var contentCRC: UInt32 = 0
    /// Codecs and transforms the entry's frames use (the index row's frame kinds).
    private(set) var frameKinds: UInt8 = 0
    /// Pages that must come next, in order.
    private(set) var expectedPages: [[UInt8]] = []
    private var pageCursor = 0
    private(set) var framesFinished = false

    init(record: EntryRecord, recordLength: Int, features: UInt32) {
        self.record = record
        self.features = features
        table = FrameTableBuilder(exponent: record.tableExponent, entryRecordLength: recordLength)
    }

    /// Bytes of the entry's records so far, from the first byte of its entry record.
    var position: UInt64 { table.position }

    var nextExpectedPage: [UInt8]? { pageCursor < expectedPages.count ? expectedPages[pageCursor] : nil }

    /// Checks the next frame's header against the frames before it.
    mutating func accept(_ header: FrameHeader) throws {
        guard record.kind == .file else { throw CheckpackError(.corrupt, "directory entry has a frame") }
        guard !framesFinished, nextExpectedPage == nil else {
            throw CheckpackError(.corrupt, "a frame stands where the frame table page belongs")
        }
        guard header.transform == 0 || features & Format.bytePlanesFeature != 0 else {
            throw CheckpackError(.corrupt, "a frame uses the byte-plane transform but the archive does not declare required feature bit 0")
        }
        guard header.entryOffset == size else {
            throw CheckpackError(.corrupt, "frame starts at entry offset \(header.entryOffset), expected \(size)")
        }
        guard frameCount < Format.maxFramesPerEntry else {
            throw CheckpackError(.limitExceeded, "entry has more than \(Format.maxFramesPerEntry) frames")
        }
        size = try size.adding(UInt64(header.decodedLength), "entry size")
        frameCount += 1
        frameKinds |= FrameKinds.of(header)
        // The content CRC follows from the frames' decoded CRCs; whoever
        // decodes a frame checks its bytes against that CRC.
        contentCRC = CRC32C.combine(contentCRC, header.decodedCRC, length: UInt64(header.decodedLength))
        expectedPages = table.add(header)
        pageCursor = 0
    }

    /// Checks that `bytes` are exactly the page that must come next.
    mutating func acceptPage(_ bytes: ArraySlice<UInt8>) throws {
        guard let expected = nextExpectedPage else { throw CheckpackError(.corrupt, "unexpected frame table page") }
        guard bytes.elementsEqual(expected) else { throw CheckpackError(.corrupt, "frame table page does not match the frames before it") }
        pageCursor += 1
    }

    /// No more frames: the pages that close the table must come next.
    mutating func finishFrames() throws {
        guard !framesFinished else { return }
        guard nextExpectedPage == nil else { throw CheckpackError(.corrupt, "a frame table page is missing") }
        framesFinished = true
        expectedPages = table.finish()
        pageCursor = 0
    }

    /// Checks the entry end record against everything before it.
    mutating func close(_ end: EntryEnd) throws {
        try finishFrames()
        guard nextExpectedPage == nil else { throw CheckpackError(.corrupt, "a frame table page is missing before the entry end record") }
        guard end.size == size, end.frameCount == frameCount else {
            throw CheckpackError(.corrupt, "entry end says \(end.size) bytes in \(end.frameCount) frames, found \(size) in \(frameCount)")
        }
        guard end.contentCRC == contentCRC else { throw CheckpackError(.checksumMismatch, "entry content CRC32C mismatch") }
    }

    /// The entry end record this entry's frames call for.
    var end: EntryEnd { EntryEnd(size: size, frameCount: frameCount, contentCRC: contentCRC) }
}

/// The index row's summary of the kinds of frames an entry has: bit c for a
/// frame of codec c without a transform, bit 4 + c with byte planes.
enum FrameKinds {
    static let bytePlanes: UInt8 = 0x60
    static let known: UInt8 = 0x67

    static func of(_ header: FrameHeader) -> UInt8 {
        1 << (header.codec.rawValue + (header.transform == BytePlanes.transformID ? 4 : 0))
    }
}
