/// What the front-to-back reader finds, in archive order.
public enum StreamEvent: Sendable {
    case entryStart(EntryRecord)
    /// The decoded bytes of the next frame of the open entry, at `offset` in it.
    case data(offset: UInt64, bytes: [UInt8])
    case entryEnd(EntryEnd)
}

/// A record as read, with frames not yet decoded (so that they can be
/// decoded on other threads).
public enum StreamRecord: Sendable {
    case entryStart(EntryRecord)
    case frame(StreamFrame)
    case entryEnd(EntryEnd)
}

/// A frame whose header has been checked. `decode()` checks the stored bytes
/// and the decoded bytes against their CRCs; a caller that takes frames this
/// way MUST decode every one (on any thread).
public struct StreamFrame: Sendable {
    public let header: FrameHeader
    public let stored: [UInt8]

    public func decode() throws -> [UInt8] {
        guard CRC32C.checksum(stored) == header.storedCRC else {
            throw CheckpackError(.checksumMismatch, "stored bytes CRC32C mismatch")
        }
        let n = Int(header.decodedLength)
        let decoded = try [UInt8](unsafeUninitializedCapacity: n) { buffer, count in
            try stored.withUnsafeBytes { try FrameCodec.decode($0, header: header, into: UnsafeMutableRawBufferPointer(buffer)) }
            count = n
        }
        guard CRC32C.checksum(decoded) == header.decodedCRC else {
            throw CheckpackError(.checksumMismatch, "decoded bytes CRC32C mismatch")
        }
        return decoded
    }
}

/// Reads an archive front to back without seeking, as from a pipe. Every
/// record is checked as it arrives (checksums, order, offsets, names); at the
/// end the index is rebuilt from what was read and must equal the archive's
/// index byte for byte, and the trailer must close the file.
public final class ArchiveStreamReader {
    private let input: SequentialInput
    private var offset: UInt64 = 0
    private var index = IndexBuilder()
    private var tree = TreeCheck()
    private var open: (record: EntryRecord, bytes: [UInt8], offset: UInt64, firstFrame: UInt64)?
    private var entrySize: UInt64 = 0
    private var entryFrames: UInt64 = 0
    private var entryCRC: UInt32 = 0
    private var frameStarts: Set<UInt64> = []
    private var done = false
    public private(set) var entryCount = 0
    private var requiredFeatures: UInt32 = 0

    public var name: String { input.source.name }

    public init(source: any SequentialSource) throws {
        input = SequentialInput(source: source)
        do {
            requiredFeatures = try FileHeader.decode(try input.read(Format.headerSize)[...]).requiredFeatures
            offset = UInt64(Format.headerSize)
        } catch {
            throw error.checkpackContext(path: source.name)
        }
    }

    /// The next event, or nil once the index and trailer are read and verified.
    public func next() throws -> StreamEvent? {
        switch try nextRecord() {
        case nil: return nil
        case .entryStart(let record): return .entryStart(record)
        case .entryEnd(let end): return .entryEnd(end)
        case .frame(let frame):
            do {
                return .data(offset: frame.header.entryOffset, bytes: try frame.decode())
            } catch {
                done = true
                throw error.checkpackContext(path: input.source.name, entry: lastEntryName, frame: Int(entryFrames) - 1,
                                             offset: offset - UInt64(Format.frameHeaderSize) - UInt64(frame.header.storedLength))
            }
        }
    }

    /// The next record, or nil once the index and trailer are read and verified.
    /// Frames come undecoded: see `StreamFrame`.
    public func nextRecord() throws -> StreamRecord? {
        guard !done else { return nil }
        let at = offset
        do {
            return try readRecord()
        } catch {
            done = true
            throw error.checkpackContext(path: input.source.name, entry: open?.record.name, offset: at)
        }
    }

    private var lastEntryName: String? { open?.record.name }

    private func readRecord() throws -> StreamRecord? {
        let tag = try input.peek(4)
        if let entry = open {
            if tag == Format.frameTag { return try readFrame(entry.record.name) }
            if tag == Format.entryEndTag { return try readEntryEnd() }
            throw CheckpackError(.corrupt, "expected a frame or entry end record inside entry \"\(entry.record.name)\"")
        }
        if tag == Format.entryTag { return try readEntryStart() }
        if tag == Format.indexTag {
            try readIndexAndTrailer()
            done = true
            return nil
        }
        throw CheckpackError(.corrupt, "expected an entry record or the index")
    }

    private func readEntryStart() throws -> StreamRecord {
        let length = try EntryRecord.length(head: try input.peek(16)[...])
        let bytes = try input.read(length)
        let record = try EntryRecord.decode(bytes[...])
        guard UInt64(entryCount) < Format.maxEntries else {
            throw CheckpackError(.limitExceeded, "more than \(Format.maxEntries) entries")
        }
        try tree.add(record.name, kind: record.kind)
        open = (record, bytes, offset, index.frameCount)
        entrySize = 0
        entryFrames = 0
        entryCRC = 0
        frameStarts = []
        offset += UInt64(length)
        return .entryStart(record)
    }

    private func readFrame(_ name: String) throws -> StreamRecord {
        let headerBytes = try input.read(Format.frameHeaderSize)
        let header = try FrameHeader.decode(headerBytes[...])
        guard header.transform == 0 || requiredFeatures & Format.bytePlanesFeature != 0 else {
            throw CheckpackError(.corrupt, "a frame uses the byte-plane transform but the archive does not declare required feature bit 0")
        }
        guard open?.record.kind == .file else { throw CheckpackError(.corrupt, "directory entry has a frame") }
        guard header.entryOffset == entrySize else {
            throw CheckpackError(.corrupt, "frame starts at entry offset \(header.entryOffset), expected \(entrySize)")
        }
        let stored = try input.read(Int(header.storedLength))
        index.addFrame(archiveOffset: offset, header: headerBytes)
        guard index.encodedLength <= Format.maxIndexLength else {
            throw CheckpackError(.limitExceeded, "the index would exceed \(Format.maxIndexLength) bytes")
        }
        frameStarts.insert(entrySize)
        entrySize = try entrySize.adding(UInt64(header.decodedLength), "entry size")
        entryFrames += 1
        // The content CRC follows from the frames' decoded CRCs; whoever
        // decodes a frame checks its bytes against that CRC.
        entryCRC = CRC32C.combine(entryCRC, header.decodedCRC, length: UInt64(header.decodedLength))
        offset += UInt64(Format.frameHeaderSize) + UInt64(header.storedLength)
        return .frame(StreamFrame(header: header, stored: stored))
    }

    private func readEntryEnd() throws -> StreamRecord {
        guard let entry = open else { throw CheckpackError(.corrupt, "entry end record outside an entry") }
        let length = try EntryEnd.length(head: try input.peek(32)[...], frames: entryFrames)
        let bytes = try input.read(length)
        let end = try EntryEnd.decode(bytes[...])
        guard end.size == entrySize, end.frameCount == entryFrames else {
            throw CheckpackError(.corrupt, "entry end says \(end.size) bytes in \(end.frameCount) frames, found \(entrySize) in \(entryFrames)")
        }
        guard end.contentCRC == entryCRC else { throw CheckpackError(.checksumMismatch, "entry content CRC32C mismatch") }
        for boundary in end.itemBoundaries where !frameStarts.contains(boundary) {
            throw CheckpackError(.corrupt, "item boundary \(boundary) is not at the start of a frame")
        }
        index.addEntry(recordOffset: entry.offset, firstFrame: entry.firstFrame, record: entry.bytes, end: bytes)
        open = nil
        entryCount += 1
        offset += UInt64(length)
        return .entryEnd(end)
    }

    private func readIndexAndTrailer() throws {
        let indexOffset = offset
        let expected = index.encoded()
        let header = try ArchiveIndex.Header.decode(try input.peek(Format.indexHeaderSize)[...])
        guard try header.indexLength == UInt64(expected.count) else {
            throw CheckpackError(.corrupt, "index does not match the records before it")
        }
        let found = try input.read(expected.count)
        guard found == expected else { throw CheckpackError(.corrupt, "index does not match the records before it") }
        offset += UInt64(found.count)
        let trailer = try Trailer.decode(try input.read(Format.trailerSize)[...], base: offset)
        guard trailer.indexOffset == indexOffset, trailer.indexLength == UInt64(found.count),
              trailer.requiredFeatures == requiredFeatures,
              trailer.indexCRC == CRC32C.checksum(found) else {
            throw CheckpackError(.corrupt, "trailer does not describe the index").at(offset: offset)
        }
        offset += UInt64(Format.trailerSize)
        guard try input.atEnd() else { throw CheckpackError(.corrupt, "data follows the trailer").at(offset: offset) }
    }
}

/// Bytes read front to back: a pipe, a file, memory.
public protocol SequentialSource {
    var name: String { get }
    /// Reads up to `buffer.count` bytes; returns 0 only at the end of the input.
    func readSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

extension SystemFile: SequentialSource {
    public var name: String { path }
}

/// Buffered sequential reads that report a short input as `truncated`.
final class SequentialInput {
    let source: any SequentialSource
    private var buffer: [UInt8]
    private var start = 0
    private var end = 0
    private var exhausted = false

    init(source: any SequentialSource, bufferSize: Int = 64 << 10) {
        self.source = source
        buffer = [UInt8](repeating: 0, count: bufferSize)
    }

    private var available: Int { end - start }

    /// Makes at least `count` bytes available, unless the input ends first.
    private func fill(_ count: Int) throws {
        guard available < count, !exhausted else { return }
        if start > 0 {
            buffer.withUnsafeMutableBytes { raw in
                raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: end - start)
            }
            end -= start
            start = 0
        }
        if count > buffer.count { buffer.append(contentsOf: repeatElement(0, count: count - buffer.count)) }
        while end < count {
            let got = try buffer.withUnsafeMutableBytes { raw in
                try source.readSome(into: UnsafeMutableRawBufferPointer(rebasing: raw[end...]))
            }
            if got == 0 {
                exhausted = true
                break
            }
            end += got
        }
    }

    func peek(_ count: Int) throws -> [UInt8] {
        try fill(count)
        guard available >= count else { throw CheckpackError(.truncated, "archive ends early (needs \(count) more bytes, has \(available))") }
        return Array(buffer[start..<start + count])
    }

    func read(_ count: Int) throws -> [UInt8] {
        let bytes = try peek(count)
        start += count
        return bytes
    }

    func atEnd() throws -> Bool {
        try fill(1)
        return available == 0
    }
}
