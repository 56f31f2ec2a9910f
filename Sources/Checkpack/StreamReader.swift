/// What the front-to-back reader finds, in archive order.
public enum StreamEvent: Sendable {
    /// An entry begins: its kind, mode, name and attributes.
    case entryStart(EntryRecord)
    /// The decoded bytes of the next frame of the open entry, at `offset` in it.
    case data(offset: UInt64, bytes: [UInt8])
    /// The open entry ends: its size, frame count and content CRC32C, all checked.
    case entryEnd(EntryEnd)
}

/// A record as read, with frames not yet decoded (so that they can be
/// decoded on other threads).
package enum StreamRecord: Sendable {
    case entryStart(EntryRecord)
    case frame(StreamFrame)
    case entryEnd(EntryEnd)
}

/// A frame whose header has been checked. `decode()` checks the stored bytes
/// and the decoded bytes against their CRCs; a caller that takes frames this
/// way MUST decode every one (on any thread).
package struct StreamFrame: Sendable {
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

/// Reads records front to back from `input`, one entry after another, and
/// checks each with an `EntryValidator`: the one record reader of the stream
/// reader and of verify. Frame table pages are checked and consumed here;
/// frames come out undecoded. Stops (returning nil) in front of the index.
final class RecordReader {
    let input: SequentialInput
    let features: UInt32
    /// Archive offset of the next byte of `input`.
    private(set) var offset: UInt64
    /// Archive offset of the record `next()` returned last.
    private(set) var recordOffset: UInt64 = 0
    private var open: (validator: EntryValidator, recordBytes: [UInt8], offset: UInt64)?
    /// The index row of each entry closed so far is handed here.
    var onEntryClosed: ((IndexRow) throws -> Void)?

    /// Read frames' stored bytes (else skip them: for walks that need headers only).
    let readStored: Bool

    init(input: SequentialInput, offset: UInt64, features: UInt32, readStored: Bool = true) {
        self.input = input
        self.offset = offset
        self.features = features
        self.readStored = readStored
    }

    var openEntryName: String? { open?.validator.record.name }
    /// Frames of the open entry so far.
    var openFrameCount: UInt64 { open?.validator.frameCount ?? 0 }

    /// The next record, or nil at the index (`INDX`), which is left unread.
    func next() throws -> StreamRecord? {
        guard var entry = open else {
            let tag = try input.peek(4)
            if tag == Format.indexTag { return nil }
            guard tag == Format.entryTag else { throw CheckpackError(.corrupt, "expected an entry record or the index") }
            return try readEntryStart()
        }
        open = nil   // keep the validator's buffers uniquely referenced; put back below
        while true {
            if let page = entry.validator.nextExpectedPage {
                try entry.validator.acceptPage(try input.read(page.count)[...])
                offset += UInt64(page.count)
                continue
            }
            let tag = try input.peek(4)
            if tag == Format.frameTag && !entry.validator.framesFinished {
                recordOffset = offset
                let headerBytes = try input.read(Format.frameHeaderSize)
                let header = try FrameHeader.decode(headerBytes[...])
                try entry.validator.accept(header)
                let stored = readStored ? try input.read(Int(header.storedLength)) : try input.skip(UInt64(header.storedLength))
                offset += UInt64(Format.frameHeaderSize) + UInt64(header.storedLength)
                open = entry
                return .frame(StreamFrame(header: header, stored: stored))
            }
            if tag == Format.pageTag || tag == Format.entryEndTag, !entry.validator.framesFinished {
                try entry.validator.finishFrames()
                continue
            }
            guard tag == Format.entryEndTag else {
                throw CheckpackError(.corrupt, "expected a frame, a frame table page or an entry end record inside entry \"\(entry.validator.record.name)\"")
            }
            recordOffset = offset
            let end = try EntryEnd.decode(try input.read(Format.entryEndSize)[...])
            try entry.validator.close(end)
            let row = IndexRow(recordOffset: entry.offset, endOffset: offset, recordBytes: entry.recordBytes, validator: entry.validator)
            offset += UInt64(Format.entryEndSize)
            try onEntryClosed?(row)
            return .entryEnd(end)
        }
    }

    private func readEntryStart() throws -> StreamRecord {
        let length = try EntryRecord.length(head: try input.peek(16)[...])
        recordOffset = offset
        let bytes = try input.read(length)
        let record = try EntryRecord.decode(bytes[...])
        open = (EntryValidator(record: record, recordLength: length, features: features), bytes, offset)
        offset += UInt64(length)
        return .entryStart(record)
    }
}

/// Reads an archive front to back without seeking, as from a pipe. Every
/// record is checked as it arrives (checksums, order, offsets, frame tables,
/// names); at the end the index is rebuilt from what was read and must equal
/// the archive's index byte for byte, and the trailer must close the file.
public final class ArchiveStreamReader {
    private let records: RecordReader
    private var index = IndexBuilder()
    private var tree = TreeCheck()
    private var done = false
    /// Entries read so far.
    public private(set) var entryCount = 0
    private let source: any SequentialSource

    /// The source's name, for messages.
    public var name: String { source.name }

    /// Starts reading `source`, whose first bytes must be an archive's file header.
    public init(source: any SequentialSource) throws {
        self.source = source
        let input = SequentialInput(source: source)
        do {
            let features = try FileHeader.decode(try input.read(Format.headerSize)[...]).requiredFeatures
            records = RecordReader(input: input, offset: UInt64(Format.headerSize), features: features)
        } catch {
            throw error.checkpackContext(path: source.name)
        }
        records.onEntryClosed = { [unowned self] row in
            guard self.index.entryCount < Format.maxEntries else {
                throw CheckpackError(.limitExceeded, "more than \(Format.maxEntries) entries")
            }
            self.index.add(row)
            guard self.index.encodedLength <= Format.maxIndexLength else {
                throw CheckpackError(.limitExceeded, "the index would exceed \(Format.maxIndexLength) bytes")
            }
            self.entryCount += 1
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
                throw error.checkpackContext(path: name, entry: records.openEntryName, frame: Int(records.openFrameCount) - 1,
                                             offset: records.recordOffset)
            }
        }
    }

    /// The next record, or nil once the index and trailer are read and verified.
    /// Frames come undecoded: see `StreamFrame`.
    package func nextRecord() throws -> StreamRecord? {
        guard !done else { return nil }
        let at = records.offset
        let entryName = records.openEntryName
        do {
            guard let record = try records.next() else {
                try readIndexAndTrailer()
                done = true
                return nil
            }
            if case .entryStart(let started) = record { try tree.add(started.name, kind: started.kind) }
            return record
        } catch {
            done = true
            throw error.checkpackContext(path: name, entry: entryName ?? records.openEntryName, offset: at)
        }
    }

    private func readIndexAndTrailer() throws {
        let input = records.input
        let indexOffset = records.offset
        let expected = index.encoded()
        let count = try ArchiveIndex.decodeHeader(try input.peek(Format.indexHeaderSize)[...])
        guard count == index.entryCount else { throw CheckpackError(.corrupt, "index does not match the records before it") }
        let found = try input.read(expected.count)
        guard found == expected else { throw CheckpackError(.corrupt, "index does not match the records before it") }
        var offset = indexOffset + UInt64(found.count)
        let trailer = try Trailer.decode(try input.read(Format.trailerSize)[...], base: offset)
        guard trailer.indexOffset == indexOffset, trailer.indexLength == UInt64(found.count),
              trailer.requiredFeatures == records.features,
              trailer.indexCRC == CRC32C.checksum(found) else {
            throw CheckpackError(.corrupt, "trailer does not describe the index").at(offset: offset)
        }
        offset += UInt64(Format.trailerSize)
        guard try input.atEnd() else { throw CheckpackError(.corrupt, "data follows the trailer").at(offset: offset) }
    }
}

/// Bytes read front to back: a pipe, a file, memory.
public protocol SequentialSource {
    /// A name for error messages.
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

    /// Moves past `count` bytes without keeping them; returns no bytes.
    func skip(_ count: UInt64) throws -> [UInt8] {
        let buffered = min(UInt64(available), count)
        start += Int(buffered)
        var rest = count - buffered
        if rest > 0, let seekable = source as? RangeSource {
            rest -= seekable.skip(rest)
        }
        while rest > 0 {
            let n = Int(min(rest, UInt64(buffer.count)))
            _ = try read(n)
            rest -= UInt64(n)
        }
        return []
    }

    func atEnd() throws -> Bool {
        try fill(1)
        return available == 0
    }
}
