/// One logical file or directory of an archive, as the index describes it.
public struct ArchiveEntry: Sendable {
    public var name: String { record.name }
    public var kind: EntryKind { record.kind }
    /// Permission bits (at most 0o7777).
    public var mode: UInt32 { record.mode }
    public var attributes: [(key: String, value: String)] { record.attributes }
    public var size: UInt64 { end.size }
    /// CRC32C of the entry's whole content.
    public var contentCRC: UInt32 { end.contentCRC }
    public var itemBoundaries: [UInt64] { end.itemBoundaries }
    /// Sum of the stored (compressed) lengths of the entry's frames.
    public let storedSize: UInt64
    /// The entry's frames: positions in `ArchiveIndex.frames`.
    public let frames: Range<Int>
    /// Archive offset of the entry's in-band entry record.
    public let recordOffset: UInt64
    /// Archive offset of the entry's in-band entry end record.
    public let endOffset: UInt64

    let record: EntryRecord
    let end: EntryEnd

    public func attribute(_ key: String) -> String? {
        attributes.first(where: { $0.key == key })?.value
    }
}

/// A frame as the index describes it: where it is and its header.
public struct FrameLocation: Sendable, Equatable {
    /// Archive offset of the frame's 40-byte header; its stored bytes follow it.
    public let archiveOffset: UInt64
    public let header: FrameHeader

    var payloadOffset: UInt64 { archiveOffset + UInt64(Format.frameHeaderSize) }
    /// The bytes of its entry that the frame holds.
    public var entryRange: Range<UInt64> { header.entryOffset..<header.entryOffset + UInt64(header.decodedLength) }
}

/// Serializes an index. The writer feeds it as records are written; the
/// streaming reader feeds it as records are read and compares the result with
/// the archive's index byte for byte.
struct IndexBuilder {
    private var entries = ByteWriter(capacity: 4096)
    private var frames = ByteWriter(capacity: 4096)
    private(set) var entryCount: UInt64 = 0
    private(set) var frameCount: UInt64 = 0

    var encodedLength: UInt64 {
        UInt64(Format.indexHeaderSize + entries.bytes.count + frames.bytes.count)
    }

    mutating func addEntry(recordOffset: UInt64, firstFrame: UInt64, record: [UInt8], end: [UInt8]) {
        entries.u64(recordOffset)
        entries.u64(firstFrame)
        entries.raw(record)
        entries.raw(end)
        entryCount += 1
    }

    mutating func addFrame(archiveOffset: UInt64, header: [UInt8]) {
        frames.u64(archiveOffset)
        frames.raw(header)
        frameCount += 1
    }

    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Int(encodedLength))
        w.raw(Format.indexTag)
        w.u32(0)
        w.u64(entryCount)
        w.u64(frameCount)
        w.u64(UInt64(entries.bytes.count))
        w.raw(entries.bytes)
        w.raw(frames.bytes)
        return w.bytes
    }
}

/// The parsed and fully validated footer index.
public struct ArchiveIndex: Sendable {
    public let entries: [ArchiveEntry]
    public let frames: [FrameLocation]
    /// Where the records end and the index starts.
    public let recordsEnd: UInt64

    /// The index header: tag, entry count, frame count, entries section length.
    struct Header {
        var entryCount: UInt64
        var frameCount: UInt64
        var entriesLength: UInt64

        /// Total index length this header implies, overflow-checked.
        var indexLength: UInt64 {
            get throws {
                let framesLength = try frameCount.multiplied(by: UInt64(Format.indexFrameSize), "index frame table length")
                return try UInt64(Format.indexHeaderSize).adding(entriesLength, "index length").adding(framesLength, "index length")
            }
        }

        static func decode(_ bytes: ArraySlice<UInt8>) throws -> Header {
            var r = ByteReader(bytes)
            guard Array(try r.take(4)) == Format.indexTag else { throw CheckpackError(.corrupt, "expected the index (INDX)") }
            guard try r.u32() == 0 else { throw CheckpackError(.corrupt, "index reserved field is not zero") }
            let header = Header(entryCount: try r.u64(), frameCount: try r.u64(), entriesLength: try r.u64())
            guard header.entryCount <= Format.maxEntries else {
                throw CheckpackError(.limitExceeded, "index claims \(header.entryCount) entries, the limit is \(Format.maxEntries)")
            }
            let minimumEntry = UInt64(Format.indexEntryFixedSize + Format.entryRecordFixedSize + 1 + Format.entryEndFixedSize)
            guard header.entryCount <= header.entriesLength / minimumEntry else {
                throw CheckpackError(.corrupt, "index claims \(header.entryCount) entries in \(header.entriesLength) bytes")
            }
            return header
        }
    }

    /// Parses `bytes`, the index found at archive offset `indexOffset`, and
    /// checks every rule of the format that the index alone can show: the
    /// records it describes tile the archive from the end of the file header to
    /// the index with no gap or overlap.
    static func parse(_ bytes: [UInt8], indexOffset: UInt64) throws -> ArchiveIndex {
        let header = try Header.decode(bytes[...])
        let expectedLength = try header.indexLength
        guard expectedLength == UInt64(bytes.count) else {
            throw CheckpackError(.corrupt, "index length \(bytes.count) does not match its header (\(expectedLength))", offset: indexOffset)
        }
        let entriesStart = Format.indexHeaderSize
        let entriesEnd = entriesStart + Int(header.entriesLength)
        let frames = try parseFrames(bytes[entriesEnd...], count: Int(header.frameCount), indexOffset: indexOffset)

        var reader = ByteReader(bytes[entriesStart..<entriesEnd])
        var entries: [ArchiveEntry] = []
        entries.reserveCapacity(Int(header.entryCount))
        var cursor = UInt64(Format.headerSize)   // where the next record must start
        var nextFrame = 0
        var tree = TreeCheck()
        for _ in 0..<Int(header.entryCount) {
            let at = indexOffset + UInt64(entriesStart + reader.consumed)
            do {
                let entry = try parseEntry(&reader, frames: frames, nextFrame: &nextFrame, cursor: &cursor)
                try tree.add(entry.name, kind: entry.kind)
                entries.append(entry)
            } catch {
                throw error.checkpackContext(offset: at)
            }
        }
        guard reader.remaining == 0 else {
            throw CheckpackError(.corrupt, "index entries section has \(reader.remaining) bytes after its last entry", offset: indexOffset)
        }
        guard nextFrame == frames.count else {
            throw CheckpackError(.corrupt, "index lists \(frames.count - nextFrame) frames that belong to no entry", offset: indexOffset)
        }
        guard cursor == indexOffset else {
            throw CheckpackError(.corrupt, "records end at \(cursor) but the index starts at \(indexOffset)", offset: indexOffset)
        }
        return ArchiveIndex(entries: entries, frames: frames, recordsEnd: indexOffset)
    }

    private static func parseFrames(_ bytes: ArraySlice<UInt8>, count: Int, indexOffset: UInt64) throws -> [FrameLocation] {
        var frames: [FrameLocation] = []
        frames.reserveCapacity(count)
        var reader = ByteReader(bytes)
        for number in 0..<count {
            do {
                let offset = try reader.u64()
                let header = try FrameHeader.decode(try reader.take(Format.frameHeaderSize))
                frames.append(FrameLocation(archiveOffset: offset, header: header))
            } catch {
                throw error.checkpackContext(frame: number, offset: indexOffset + UInt64(bytes.startIndex + number * Format.indexFrameSize))
            }
        }
        return frames
    }

    private static func parseEntry(_ reader: inout ByteReader, frames: [FrameLocation], nextFrame: inout Int,
                                   cursor: inout UInt64) throws -> ArchiveEntry {
        let recordOffset = try reader.u64()
        let firstFrame = try reader.u64()
        let recordBytes = try reader.take(try EntryRecord.length(head: reader.bytes[reader.position...].prefix(16)))
        let record = try EntryRecord.decode(recordBytes)
        do {
            let endHead = reader.bytes[reader.position...].prefix(32)
            let endBytes = try reader.take(try EntryEnd.length(head: endHead, frames: UInt64(frames.count - nextFrame)))
            let end = try EntryEnd.decode(endBytes)
            guard recordOffset == cursor else {
                throw CheckpackError(.corrupt, "entry record is at \(recordOffset), expected \(cursor) (gap or overlap)")
            }
            guard firstFrame == UInt64(nextFrame) else {
                throw CheckpackError(.corrupt, "first frame is \(firstFrame), expected \(nextFrame)")
            }
            guard end.frameCount <= UInt64(frames.count - nextFrame) else {
                throw CheckpackError(.corrupt, "entry claims \(end.frameCount) frames, the index has \(frames.count - nextFrame) left")
            }
            if record.kind == .directory, end.frameCount != 0 || end.size != 0 {
                throw CheckpackError(.corrupt, "directory entry has content")
            }
            cursor = try cursor.adding(UInt64(recordBytes.count), "record offset")
            let range = nextFrame..<nextFrame + Int(end.frameCount)
            var logical: UInt64 = 0
            var stored: UInt64 = 0
            var boundaries = end.itemBoundaries[...]
            for number in range {
                let frame = frames[number]
                guard frame.archiveOffset == cursor else {
                    throw CheckpackError(.corrupt, "frame \(number) is at \(frame.archiveOffset), expected \(cursor) (gap or overlap)")
                }
                guard frame.header.entryOffset == logical else {
                    throw CheckpackError(.corrupt, "frame \(number) starts at entry offset \(frame.header.entryOffset), expected \(logical)")
                }
                if let boundary = boundaries.first, boundary <= logical {
                    guard boundary == logical else {
                        throw CheckpackError(.corrupt, "item boundary \(boundary) is not at the start of a frame")
                    }
                    boundaries = boundaries.dropFirst()
                }
                let length = UInt64(Format.frameHeaderSize) + UInt64(frame.header.storedLength)
                cursor = try cursor.adding(length, "frame end")
                logical = try logical.adding(UInt64(frame.header.decodedLength), "entry size")
                stored += UInt64(frame.header.storedLength)
            }
            if let stray = boundaries.first {
                throw CheckpackError(.corrupt, "item boundary \(stray) is not at the start of a frame")
            }
            guard logical == end.size else {
                throw CheckpackError(.corrupt, "frames hold \(logical) bytes, the entry says \(end.size)")
            }
            let endOffset = cursor
            cursor = try cursor.adding(UInt64(endBytes.count), "record offset")
            nextFrame = range.upperBound
            return ArchiveEntry(storedSize: stored, frames: range, recordOffset: recordOffset, endOffset: endOffset,
                                record: record, end: end)
        } catch {
            throw error.checkpackContext(entry: record.name)
        }
    }
}
