/// One logical file or directory of an archive, as the index describes it.
/// Attributes and item boundaries live in the entry's own records: see
/// `ArchiveReader.attributes(of:)` and `ArchiveReader.itemBoundaries(of:)`.
public struct ArchiveEntry: Sendable {
    /// The name, decoded from the row's bytes once they were validated.
    public let name: String
    let row: IndexRow

    /// A file or a directory.
    public var kind: EntryKind { row.kind }
    /// Permission bits (at most 0o7777).
    public var mode: UInt32 { row.mode }
    /// The entry's content size in bytes (0 for a directory).
    public var size: UInt64 { row.size }
    /// CRC32C of the entry's whole content.
    public var contentCRC: UInt32 { row.contentCRC }
    /// How many frames hold the entry's content.
    public var frameCount: UInt64 { row.frameCount }
    /// Archive offset of the entry's in-band entry record.
    public var recordOffset: UInt64 { row.recordOffset }
    /// Archive offset of the entry's in-band entry end record.
    public var endOffset: UInt64 { row.endOffset }

    /// Bytes the entry takes in the archive: its records, frames and frame table.
    public var storedSize: UInt64 { endOffset - recordOffset + UInt64(Format.entryEndSize) }
    /// The kinds of frame the entry has, in codec order: each codec used without
    /// a transform, then each codec used with byte planes.
    public var frameKinds: [(codec: Codec, bytePlanes: Bool)] {
        [false, true].flatMap { planes in
            Codec.allCases.filter { row.frameKinds & (1 << ($0.rawValue + (planes ? 4 : 0))) != 0 }.map { ($0, planes) }
        }
    }

    var tableShape: TableShape { TableShape(frameCount: frameCount, exponent: row.tableExponent) }
    /// Where the entry's frames and table start: right after its entry record.
    var dataStart: UInt64 { recordOffset + UInt64(row.entryRecordLength) }
}

/// One entry's row of the index (section 6.2).
struct IndexRow: Sendable, Equatable {
    var recordOffset: UInt64
    var endOffset: UInt64
    var size: UInt64
    var frameCount: UInt64
    var contentCRC: UInt32
    /// The CRC32C field of the entry record: ties the row to the record's attributes.
    var recordCRC: UInt32
    var attributesLength: UInt32
    var mode: UInt32
    var kind: EntryKind
    var tableExponent: UInt8
    var frameKinds: UInt8
    var name: [UInt8]

    var encodedLength: Int { Format.indexRowFixedSize + name.count }
    /// Where the u16 name length sits in a row (for a reader that walks rows without decoding them).
    static let nameLengthOffset = 52
    var entryRecordLength: Int { Format.entryRecordFixedSize + name.count + Int(attributesLength) }

    /// The row for an entry whose records were written or read in full.
    init(recordOffset: UInt64, endOffset: UInt64, recordBytes: [UInt8], validator: EntryValidator) {
        let record = validator.record
        self.recordOffset = recordOffset
        self.endOffset = endOffset
        size = validator.size
        frameCount = validator.frameCount
        contentCRC = validator.contentCRC
        recordCRC = ByteReader.u32(recordBytes.suffix(4))
        attributesLength = UInt32(record.attributesLength)
        mode = record.mode
        kind = record.kind
        tableExponent = record.tableExponent
        frameKinds = validator.frameKinds
        name = Array(record.name.utf8)
    }

    init(recordOffset: UInt64, endOffset: UInt64, size: UInt64, frameCount: UInt64, contentCRC: UInt32, recordCRC: UInt32,
         attributesLength: UInt32, mode: UInt32, kind: EntryKind, tableExponent: UInt8, frameKinds: UInt8, name: [UInt8]) {
        self.recordOffset = recordOffset
        self.endOffset = endOffset
        self.size = size
        self.frameCount = frameCount
        self.contentCRC = contentCRC
        self.recordCRC = recordCRC
        self.attributesLength = attributesLength
        self.mode = mode
        self.kind = kind
        self.tableExponent = tableExponent
        self.frameKinds = frameKinds
        self.name = name
    }

    func encode(into w: inout ByteWriter) {
        w.u64(recordOffset)
        w.u64(endOffset)
        w.u64(size)
        w.u64(frameCount)
        w.u32(contentCRC)
        w.u32(recordCRC)
        w.u32(attributesLength)
        w.u32(mode)
        w.u8(kind.rawValue)
        w.u8(tableExponent)
        w.u8(frameKinds)
        w.u8(0)
        w.u16(UInt16(name.count))
        w.u16(0)
        w.raw(name)
    }

    /// Decodes one row and checks the values it holds on its own.
    static func decode(_ r: inout ByteReader) throws -> IndexRow {
        let recordOffset = try r.u64()
        let endOffset = try r.u64()
        let size = try r.u64()
        let frameCount = try r.u64()
        let contentCRC = try r.u32()
        let recordCRC = try r.u32()
        let attributesLength = try r.u32()
        let mode = try r.u32()
        let kindByte = try r.u8()
        let exponent = try r.u8()
        let frameKinds = try r.u8()
        let reserved1 = try r.u8()
        let nameLength = Int(try r.u16())
        let reserved2 = try r.u16()
        let name = Array(try r.take(nameLength))
        guard reserved1 == 0, reserved2 == 0 else { throw CheckpackError(.corrupt, "index row reserved field is not zero") }
        guard let kind = EntryKind(rawValue: kindByte) else { throw CheckpackError(.corrupt, "unknown entry kind \(kindByte)") }
        guard mode <= Format.maxMode else { throw CheckpackError(.corrupt, "mode 0o\(String(mode, radix: 8)) has bits beyond 0o7777") }
        guard Format.tableExponents.contains(exponent) else {
            throw CheckpackError(.corrupt, "frame table exponent \(exponent) is outside \(Format.tableExponents)")
        }
        guard attributesLength <= Format.maxAttributesLength else {
            throw CheckpackError(.limitExceeded, "attributes length \(attributesLength) exceeds \(Format.maxAttributesLength)")
        }
        guard frameKinds & ~FrameKinds.known == 0, (frameKinds == 0) == (frameCount == 0) else {
            throw CheckpackError(.corrupt, "index row's frame kinds 0x\(String(frameKinds, radix: 16)) do not fit \(frameCount) frames")
        }
        guard frameCount <= Format.maxFramesPerEntry else {
            throw CheckpackError(.limitExceeded, "entry claims \(frameCount) frames, the limit is \(Format.maxFramesPerEntry)")
        }
        return IndexRow(recordOffset: recordOffset, endOffset: endOffset, size: size, frameCount: frameCount, contentCRC: contentCRC,
                        recordCRC: recordCRC, attributesLength: attributesLength, mode: mode, kind: kind, tableExponent: exponent,
                        frameKinds: frameKinds, name: name)
    }
}

/// Serializes an index (section 6). The writer feeds it as entries close;
/// the stream reader feeds it as it reads and compares the result with the
/// archive's index byte for byte.
struct IndexBuilder {
    private var rows = ByteWriter(capacity: 4096)
    private(set) var entryCount: UInt64 = 0

    var encodedLength: UInt64 { UInt64(Format.indexHeaderSize + rows.bytes.count) }

    mutating func add(_ row: IndexRow) {
        row.encode(into: &rows)
        entryCount += 1
    }

    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Int(encodedLength))
        w.raw(Format.indexTag)
        w.u32(0)
        w.u64(entryCount)
        w.raw(rows.bytes)
        return w.bytes
    }
}

/// The parsed and fully validated footer index.
package struct ArchiveIndex: Sendable {
    public let entries: [ArchiveEntry]
    /// Where the records end and the index starts.
    public let recordsEnd: UInt64

    /// The index header: tag and entry count.
    static func decodeHeader(_ bytes: ArraySlice<UInt8>) throws -> UInt64 {
        var r = ByteReader(bytes)
        guard try r.take(4).elementsEqual(Format.indexTag) else { throw CheckpackError(.corrupt, "expected the index (INDX)") }
        guard try r.u32() == 0 else { throw CheckpackError(.corrupt, "index reserved field is not zero") }
        let count = try r.u64()
        guard count <= Format.maxEntries else {
            throw CheckpackError(.limitExceeded, "index claims \(count) entries, the limit is \(Format.maxEntries)")
        }
        return count
    }

    /// Parses `bytes`, the index found at archive offset `indexOffset`, and
    /// checks every rule that the index alone can show: each row's values,
    /// names, and that the entries tile the archive from the end of the file
    /// header to the index, each long enough for the frames and table it claims.
    static func parse(_ bytes: [UInt8], indexOffset: UInt64, features: UInt32) throws -> ArchiveIndex {
        let count = try decodeHeader(bytes[...])
        let minimumRow = UInt64(Format.indexRowFixedSize + 1)
        guard count <= UInt64(bytes.count - Format.indexHeaderSize) / minimumRow else {
            throw CheckpackError(.corrupt, "index claims \(count) entries in \(bytes.count) bytes", offset: indexOffset)
        }
        var reader = ByteReader(bytes[Format.indexHeaderSize...])
        var entries: [ArchiveEntry] = []
        entries.reserveCapacity(Int(count))
        var cursor = UInt64(Format.headerSize)   // where the next entry record must start
        var tree = TreeCheck()
        for _ in 0..<count {
            let at = indexOffset + UInt64(Format.indexHeaderSize + reader.consumed)
            do {
                let row = try IndexRow.decode(&reader)
                let name = try EntryName.validate(row.name[...])
                do {
                    try checkPlacement(row, cursor: cursor, features: features)
                    try tree.add(name, kind: row.kind)
                } catch {
                    throw error.checkpackContext(entry: name)
                }
                cursor = row.endOffset + UInt64(Format.entryEndSize)   // checked by checkPlacement
                entries.append(ArchiveEntry(name: name, row: row))
            } catch {
                throw error.checkpackContext(offset: at)
            }
        }
        guard reader.remaining == 0 else {
            throw CheckpackError(.corrupt, "index has \(reader.remaining) bytes after its last row", offset: indexOffset)
        }
        guard cursor == indexOffset else {
            throw CheckpackError(.corrupt, "records end at \(cursor) but the index starts at \(indexOffset)", offset: indexOffset)
        }
        return ArchiveIndex(entries: entries, recordsEnd: indexOffset)
    }

    /// The row's entry starts at `cursor`, and its records are long enough for
    /// what it claims: the entry record, at least 41 bytes per frame, and the
    /// exact bytes of its frame table.
    private static func checkPlacement(_ row: IndexRow, cursor: UInt64, features: UInt32) throws {
        guard row.recordOffset == cursor else {
            throw CheckpackError(.corrupt, "entry record is at \(row.recordOffset), expected \(cursor) (gap or overlap)")
        }
        if row.kind == .directory, row.frameCount != 0 || row.size != 0 {
            throw CheckpackError(.corrupt, "directory entry has content")
        }
        guard (row.frameCount == 0) == (row.size == 0), row.frameCount <= row.size else {
            throw CheckpackError(.corrupt, "entry of \(row.size) bytes cannot have \(row.frameCount) frames")
        }
        let size64 = row.size
        guard row.frameCount == 0 || size64 / row.frameCount <= UInt64(Format.maxFrameSize) else {
            throw CheckpackError(.limitExceeded, "entry of \(row.size) bytes cannot fit in \(row.frameCount) frames of at most \(Format.maxFrameSize) bytes")
        }
        guard row.frameKinds & FrameKinds.bytePlanes == 0 || features & Format.bytePlanesFeature != 0 else {
            throw CheckpackError(.corrupt, "a frame uses the byte-plane transform but the archive does not declare required feature bit 0")
        }
        let table = try TableShape(frameCount: row.frameCount, exponent: row.tableExponent).totalPageBytes
        let frames = try row.frameCount.multiplied(by: UInt64(Format.frameHeaderSize + 1), "entry length")
        let minimumEnd = try cursor.adding(UInt64(row.entryRecordLength), "entry length").adding(frames, "entry length")
            .adding(table, "entry length")
        guard row.endOffset >= minimumEnd else {
            throw CheckpackError(.corrupt, "entry end record at \(row.endOffset) leaves too little room for \(row.frameCount) frames and their table")
        }
        _ = try row.endOffset.adding(UInt64(Format.entryEndSize), "entry end")
    }
}
