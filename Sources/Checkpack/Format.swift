// The byte layout of a Checkpack archive, version 2. spec/FORMAT.md is the
// normative description; the names here follow its section names.

/// Constants and limits of format version 2.
package enum Format {
    public static let version: UInt16 = 2
    /// File header magic: 0x89 "CKPK" CR LF 0x1A.
    static let headerMagic: [UInt8] = [0x89, 0x43, 0x4B, 0x50, 0x4B, 0x0D, 0x0A, 0x1A]
    /// Trailer magic, the last 8 bytes of every archive.
    static let trailerMagic: [UInt8] = Array("CKPK-END".utf8)
    static let entryTag: [UInt8] = Array("ENTR".utf8)
    static let frameTag: [UInt8] = Array("FRAM".utf8)
    static let entryEndTag: [UInt8] = Array("EEND".utf8)
    static let indexTag: [UInt8] = Array("INDX".utf8)
    static let pageTag: [UInt8] = Array("FTBL".utf8)

    static let headerSize = 16
    static let frameHeaderSize = 40
    static let entryRecordFixedSize = 20   // 16-byte head + 4-byte CRC
    static let entryEndSize = 32
    static let indexHeaderSize = 16
    static let indexRowFixedSize = 56      // index row without the name
    static let pageHeaderSize = 20         // frame table page: head before the rows
    static let trailerSize = 48
    /// The smallest archive: header, an index of no entries, trailer.
    static let minimumArchiveSize = UInt64(headerSize + indexHeaderSize + trailerSize)

    /// Required feature bit 0: frames may use the byte-plane transform (transform 1).
    public static let bytePlanesFeature: UInt32 = 1
    /// Required feature bits this reader understands.
    static let knownRequiredFeatures: UInt32 = bytePlanesFeature

    /// Attribute naming what each item of an entry holds (section 4.4): a
    /// torch dtype name per item, comma-separated, or "-".
    public static let itemDTypesKey = "checkpack.item-dtypes"

    public static let maxFrameSize = 64 << 20
    public static let minFrameSize = 4096
    public static let maxNameLength = 4096
    public static let maxNameComponentLength = 255
    public static let maxAttributesLength = 65536
    public static let maxAttributeKeyLength = 255
    public static let maxEntries: UInt64 = 1 << 24
    public static let maxIndexLength: UInt64 = 1 << 32
    public static let maxMode: UInt32 = 0o7777
    /// Frames of one entry: at 4 KiB frames, 4 PiB.
    public static let maxFramesPerEntry: UInt64 = 1 << 40
    /// Frame table pages hold up to 2^t rows; t is in this range.
    static let tableExponents: ClosedRange<UInt8> = 1...12
    /// What Checkpack's writer uses: 4096 rows, a 32 KiB leaf page.
    static let defaultTableExponent: UInt8 = 12
}

/// How a frame's stored bytes are compressed.
public enum Codec: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Bytes stored as they are.
    case stored = 0
    /// Zstandard (RFC 8878): one zstd frame per archive frame.
    case zstd = 1
    /// zlib (RFC 1950): one zlib stream per archive frame.
    case zlib = 2
}

/// What an entry is.
public enum EntryKind: UInt8, Sendable {
    /// A regular file, with content.
    case file = 1
    /// A directory, without content.
    case directory = 2
}

// MARK: - File header

struct FileHeader {
    var requiredFeatures: UInt32 = 0

    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Format.headerSize)
        w.raw(Format.headerMagic)
        w.u16(Format.version)
        w.u16(0)
        w.u32(requiredFeatures)
        return w.bytes
    }

    static func decode(_ bytes: ArraySlice<UInt8>) throws -> FileHeader {
        guard bytes.count >= Format.headerSize else {
            throw CheckpackError(.truncated, "file header needs \(Format.headerSize) bytes, has \(bytes.count)", offset: 0)
        }
        var r = ByteReader(bytes)
        guard try r.take(8).elementsEqual(Format.headerMagic) else {
            throw CheckpackError(.notAnArchive, "not a Checkpack archive (bad header magic)", offset: 0)
        }
        let version = try r.u16()
        guard version == Format.version else {
            throw CheckpackError(.unsupported, "format version \(version) is not supported (this reader knows \(Format.version))", offset: 8)
        }
        guard try r.u16() == 0 else { throw CheckpackError(.corrupt, "file header reserved field is not zero", offset: 10) }
        let features = try r.u32()
        try checkFeatures(features, offset: 12)
        return FileHeader(requiredFeatures: features)
    }
}

func checkFeatures(_ features: UInt32, offset: UInt64) throws {
    let unknown = features & ~Format.knownRequiredFeatures
    guard unknown == 0 else {
        throw CheckpackError(.unsupported, "archive needs unknown required features 0x\(String(unknown, radix: 16))", offset: offset)
    }
}

// MARK: - Trailer

struct Trailer {
    var indexOffset: UInt64
    var indexLength: UInt64
    var indexCRC: UInt32
    var requiredFeatures: UInt32 = 0

    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Format.trailerSize)
        w.u64(indexOffset)
        w.u64(indexLength)
        w.u32(indexCRC)
        w.u16(Format.version)
        w.u16(0)
        w.u32(requiredFeatures)
        w.u32(0)
        w.u32(0)
        w.crcOfAll()
        w.raw(Format.trailerMagic)
        return w.bytes
    }

    /// Decodes the last 48 bytes of an archive; `base` is their archive offset.
    static func decode(_ bytes: ArraySlice<UInt8>, base: UInt64) throws -> Trailer {
        var r = ByteReader(bytes)
        let body = try r.take(40)
        guard try r.take(8).elementsEqual(Format.trailerMagic) else {
            throw CheckpackError(.notAnArchive, "not a Checkpack archive, or truncated (no trailer magic at the end)", offset: base + 40)
        }
        var b = ByteReader(body)
        let indexOffset = try b.u64()
        let indexLength = try b.u64()
        let indexCRC = try b.u32()
        let version = try b.u16()
        let reserved1 = try b.u16()
        let features = try b.u32()
        let reserved2 = try b.u32()
        let reserved3 = try b.u32()
        let crc = try b.u32()
        guard CRC32C.checksum(body.prefix(36)) == crc else {
            throw CheckpackError(.checksumMismatch, "trailer CRC32C mismatch", offset: base)
        }
        guard version == Format.version else {
            throw CheckpackError(.unsupported, "format version \(version) is not supported (this reader knows \(Format.version))", offset: base + 20)
        }
        guard reserved1 == 0, reserved2 == 0, reserved3 == 0 else {
            throw CheckpackError(.corrupt, "trailer reserved field is not zero", offset: base)
        }
        try checkFeatures(features, offset: base + 24)
        return Trailer(indexOffset: indexOffset, indexLength: indexLength, indexCRC: indexCRC, requiredFeatures: features)
    }
}

// MARK: - Entry record

/// The in-band record that opens an entry: kind, mode, name, attributes.
public struct EntryRecord: Sendable, Equatable {
    /// A file or a directory.
    public var kind: EntryKind
    /// Permission bits (at most 0o7777).
    public var mode: UInt32
    /// The entry's name: a relative, `/`-separated UTF-8 path (spec section 7).
    public var name: String
    /// Key/value attributes, sorted by key bytes.
    public var attributes: [(key: String, value: String)]
    /// Pages of the entry's frame table hold up to 2^tableExponent rows (section 4.5).
    var tableExponent: UInt8 = Format.defaultTableExponent

    public static func == (a: EntryRecord, b: EntryRecord) -> Bool {
        a.kind == b.kind && a.mode == b.mode && Array(a.name.utf8) == Array(b.name.utf8)
            && a.tableExponent == b.tableExponent
            && a.attributes.map { Array($0.key.utf8) } == b.attributes.map { Array($0.key.utf8) }
            && a.attributes.map { Array($0.value.utf8) } == b.attributes.map { Array($0.value.utf8) }
    }

    /// Bytes of the encoded attributes field.
    var attributesLength: Int { attributes.reduce(0) { $0 + 6 + $1.key.utf8.count + $1.value.utf8.count } }

    func encoded() -> [UInt8] {
        let nameBytes = Array(name.utf8)
        var attrs = ByteWriter()
        for (key, value) in attributes {
            attrs.u16(UInt16(key.utf8.count))
            attrs.raw(key.utf8)
            attrs.u32(UInt32(value.utf8.count))
            attrs.raw(value.utf8)
        }
        var w = ByteWriter(capacity: Format.entryRecordFixedSize + nameBytes.count + attrs.bytes.count)
        w.raw(Format.entryTag)
        w.u8(kind.rawValue)
        w.u8(tableExponent)
        w.u16(UInt16(nameBytes.count))
        w.u32(mode)
        w.u32(UInt32(attrs.bytes.count))
        w.raw(nameBytes)
        w.raw(attrs.bytes)
        w.crcOfAll()
        return w.bytes
    }

    /// Length of the record that starts with this 16-byte head, or an error.
    static func length(head: ArraySlice<UInt8>) throws -> Int {
        var r = ByteReader(head)
        guard try r.take(4).elementsEqual(Format.entryTag) else { throw CheckpackError(.corrupt, "expected an entry record (ENTR)") }
        _ = try r.u16()
        let nameLength = Int(try r.u16())
        _ = try r.u32()
        let attributesLength = try r.u32()
        guard nameLength >= 1, nameLength <= Format.maxNameLength else {
            throw CheckpackError(.limitExceeded, "entry name length \(nameLength) is outside 1...\(Format.maxNameLength)")
        }
        guard attributesLength <= Format.maxAttributesLength else {
            throw CheckpackError(.limitExceeded, "attributes length \(attributesLength) exceeds \(Format.maxAttributesLength)")
        }
        return Format.entryRecordFixedSize + nameLength + Int(attributesLength)
    }

    /// Decodes and validates one whole record (its length from `length(head:)`).
    static func decode(_ bytes: ArraySlice<UInt8>) throws -> EntryRecord {
        let total = try length(head: bytes.prefix(16))
        guard bytes.count == total else { throw CheckpackError(.truncated, "entry record needs \(total) bytes, has \(bytes.count)") }
        var r = ByteReader(bytes)
        _ = try r.take(4)
        let kindByte = try r.u8()
        let exponent = try r.u8()
        let nameLength = Int(try r.u16())
        let mode = try r.u32()
        let attributesLength = Int(try r.u32())
        let nameBytes = try r.take(nameLength)
        let attributeBytes = try r.take(attributesLength)
        let crc = try r.u32()
        guard CRC32C.checksum(bytes.prefix(total - 4)) == crc else {
            throw CheckpackError(.checksumMismatch, "entry record CRC32C mismatch")
        }
        guard let kind = EntryKind(rawValue: kindByte) else {
            throw CheckpackError(.corrupt, "unknown entry kind \(kindByte)")
        }
        guard Format.tableExponents.contains(exponent) else {
            throw CheckpackError(.corrupt, "frame table exponent \(exponent) is outside \(Format.tableExponents)")
        }
        guard mode <= Format.maxMode else {
            throw CheckpackError(.corrupt, "mode 0o\(String(mode, radix: 8)) has bits beyond 0o7777")
        }
        let name = try EntryName.validate(nameBytes)
        return EntryRecord(kind: kind, mode: mode, name: name, attributes: try decodeAttributes(attributeBytes),
                           tableExponent: exponent)
    }

    private static func decodeAttributes(_ bytes: ArraySlice<UInt8>) throws -> [(key: String, value: String)] {
        var r = ByteReader(bytes)
        var result: [(key: String, value: String)] = []
        var previousKey: [UInt8]? = nil
        while r.remaining > 0 {
            let keyLength = Int(try r.u16())
            guard keyLength >= 1, keyLength <= Format.maxAttributeKeyLength else {
                throw CheckpackError(.corrupt, "attribute key length \(keyLength) is outside 1...\(Format.maxAttributeKeyLength)")
            }
            let key = Array(try r.take(keyLength))
            let valueLength = try Int(checked: UInt64(try r.u32()), "attribute value length")
            let value = try r.take(valueLength)
            if let previousKey, !previousKey.lexicographicallyPrecedes(key) {
                throw CheckpackError(.corrupt, "attribute keys are not in strictly increasing byte order")
            }
            previousKey = key
            guard let keyString = String(validating: key, as: UTF8.self),
                  let valueString = String(validating: value, as: UTF8.self) else {
                throw CheckpackError(.corrupt, "attribute is not valid UTF-8")
            }
            result.append((keyString, valueString))
        }
        return result
    }
}

// MARK: - Frame header

/// The 40-byte header in front of every frame's stored bytes. Its entry's
/// frame table repeats its lengths and item flag (section 4.5).
package struct FrameHeader: Sendable, Equatable {
    public var codec: Codec
    public var transform: UInt8 = 0
    public var transformParameter: UInt16 = 0
    /// Where the frame's decoded bytes start inside its entry.
    public var entryOffset: UInt64
    public var storedLength: UInt32
    public var decodedLength: UInt32
    public var storedCRC: UInt32
    public var decodedCRC: UInt32
    /// An item (a tensor, a record) starts at this frame's first byte.
    public var startsItem = false

    static let startsItemFlag: UInt32 = 1

    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Format.frameHeaderSize)
        w.raw(Format.frameTag)
        w.u8(codec.rawValue)
        w.u8(transform)
        w.u16(transformParameter)
        w.u64(entryOffset)
        w.u32(storedLength)
        w.u32(decodedLength)
        w.u32(storedCRC)
        w.u32(decodedCRC)
        w.u32(startsItem ? FrameHeader.startsItemFlag : 0)
        w.crcOfAll()
        return w.bytes
    }

    static func decode(_ bytes: ArraySlice<UInt8>) throws -> FrameHeader {
        var r = ByteReader(bytes)
        guard try r.take(4).elementsEqual(Format.frameTag) else { throw CheckpackError(.corrupt, "expected a frame header (FRAM)") }
        let codecByte = try r.u8()
        let transform = try r.u8()
        let parameter = try r.u16()
        let entryOffset = try r.u64()
        let stored = try r.u32()
        let decoded = try r.u32()
        let storedCRC = try r.u32()
        let decodedCRC = try r.u32()
        let flags = try r.u32()
        let crc = try r.u32()
        guard CRC32C.checksum(bytes.prefix(36)) == crc else {
            throw CheckpackError(.checksumMismatch, "frame header CRC32C mismatch")
        }
        guard let codec = Codec(rawValue: codecByte) else { throw CheckpackError(.unsupported, "unknown codec \(codecByte)") }
        switch transform {
        case 0:
            guard parameter == 0 else { throw CheckpackError(.corrupt, "transform parameter \(parameter) is not zero for transform 0") }
        case BytePlanes.transformID:
            guard let element = ElementType(parameter: parameter) else {
                throw CheckpackError(.corrupt, "byte-plane transform parameter 0x\(String(parameter, radix: 16)) is not valid")
            }
            // At least one whole element (spec 5.1): checked here, so every path that reads a header refuses it.
            guard decoded >= UInt32(element.size) else {
                throw CheckpackError(.corrupt, "byte-plane frame of \(decoded) bytes holds no whole element of \(element.size) bytes")
            }
            guard codec != .stored else { throw CheckpackError(.corrupt, "a stored frame has the byte-plane transform") }
        default:
            throw CheckpackError(.unsupported, "unknown transform \(transform)")
        }
        guard flags & ~FrameHeader.startsItemFlag == 0 else { throw CheckpackError(.corrupt, "frame header has unknown flags 0x\(String(flags, radix: 16))") }
        guard entryOffset > 0 || flags == 0 else { throw CheckpackError(.corrupt, "the first frame of an entry is marked as an item start") }
        guard decoded >= 1, decoded <= Format.maxFrameSize else {
            throw CheckpackError(.limitExceeded, "decoded frame length \(decoded) is outside 1...\(Format.maxFrameSize)")
        }
        if codec == .stored {
            guard stored == decoded else { throw CheckpackError(.corrupt, "stored frame has stored length \(stored) != decoded length \(decoded)") }
            guard storedCRC == decodedCRC else { throw CheckpackError(.corrupt, "stored frame has two different CRC32C values") }
        } else {
            guard stored >= 1, stored < decoded else {
                throw CheckpackError(.corrupt, "compressed frame has stored length \(stored), must be 1...\(decoded - 1)")
            }
        }
        return FrameHeader(codec: codec, transform: transform, transformParameter: parameter, entryOffset: entryOffset,
                           storedLength: stored, decodedLength: decoded, storedCRC: storedCRC, decodedCRC: decodedCRC,
                           startsItem: flags != 0)
    }
}

// MARK: - Entry end record

/// The in-band record that closes an entry: its size, frame count and content CRC32C.
public struct EntryEnd: Sendable, Equatable {
    /// The entry's content size in bytes.
    public var size: UInt64
    /// How many frames hold the content.
    public var frameCount: UInt64
    /// CRC32C of the whole content.
    public var contentCRC: UInt32

    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Format.entryEndSize)
        w.raw(Format.entryEndTag)
        w.u32(0)
        w.u64(size)
        w.u64(frameCount)
        w.u32(contentCRC)
        w.crcOfAll()
        return w.bytes
    }

    static func decode(_ bytes: ArraySlice<UInt8>) throws -> EntryEnd {
        guard bytes.count == Format.entryEndSize else {
            throw CheckpackError(.truncated, "entry end record needs \(Format.entryEndSize) bytes, has \(bytes.count)")
        }
        var r = ByteReader(bytes)
        guard try r.take(4).elementsEqual(Format.entryEndTag) else { throw CheckpackError(.corrupt, "expected an entry end record (EEND)") }
        let reserved = try r.u32()
        let size = try r.u64()
        let frames = try r.u64()
        let crc = try r.u32()
        let recordCRC = try r.u32()
        guard CRC32C.checksum(bytes.prefix(Format.entryEndSize - 4)) == recordCRC else {
            throw CheckpackError(.checksumMismatch, "entry end record CRC32C mismatch")
        }
        guard reserved == 0 else { throw CheckpackError(.corrupt, "entry end record reserved field is not zero") }
        return EntryEnd(size: size, frameCount: frames, contentCRC: crc)
    }
}
