#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Writes an archive front to back: entries are added one after another,
/// each from memory, from a file, or piece by piece. Frames are compressed in
/// parallel with a bounded number in flight. The archive goes to a sink: a
/// local file (`FileSink`, built beside the destination and renamed into
/// place by `finish()`) or a remote object; a writer that fails or is
/// dropped unfinished leaves nothing at the destination.
public final class ArchiveWriter {
    /// The destination, for messages (a path or a URL).
    public var path: String { sink.name }
    /// The settings the writer was made with.
    public let options: WriterOptions
    /// The archive's bytes so far (its size, once finished).
    public var bytesWritten: UInt64 { output.offset }
    /// Called on the writing thread with the total entry bytes written so far.
    public var onProgress: ((UInt64) -> Void)?

    private let sink: any ArchiveSink
    private var output: BufferedOutput
    private var index = IndexBuilder()
    private var pipeline: OrderedPipeline<Record>!
    private var tree = TreeCheck()
    private var open: OpenEntry?
    private var finished = false
    private var bytesIn: UInt64 = 0
    /// Required feature bits of what was written (bit 0 once a frame uses byte planes).
    private var requiredFeatures: UInt32 = 0

    /// What flows, in order, from the producer to the file.
    private enum Record: Sendable {
        case entryStart(EntryRecord, [UInt8])
        case frame(FrameHeader, payload: ArraySlice<UInt8>)
        /// The sink knows the rest from the frames.
        case entryEnd
    }

    /// The entry being written.
    private struct OpenEntry {
        var name: String
        var record: EntryRecord
        var codec: Codec
        var level: Int32
        var framer: EntryFramer
    }

    /// State the sink keeps while records reach the file: the open entry's
    /// offset, record bytes, and the validator that builds its frame table.
    private var sinkEntry: (offset: UInt64, record: [UInt8], validator: EntryValidator)?

    /// An archive file at `path` (refused if it exists, unless `options.overwrite`).
    public convenience init(path: String, options: WriterOptions = WriterOptions()) throws {
        try options.validate()
        try self.init(sink: FileSink(path: path, overwrite: options.overwrite), options: options)
    }

    /// An archive written to `sink`, which `finish()` commits and a failure aborts.
    public convenience init(sink: any ArchiveSink, options: WriterOptions = WriterOptions()) throws {
        try self.init(sink: sink, options: options, startsArchive: true)
    }

    /// A *segment*: entries' records only, for `SegmentJoin` to place into an
    /// archive with others (records hold no archive offsets). With
    /// `startsArchive` it begins with the file header. `finishSegment()` ends it;
    /// the sink is then the caller's to finish.
    package init(sink: any ArchiveSink, options: WriterOptions, startsArchive: Bool) throws {
        do { try options.validate() } catch {
            sink.abort()
            throw error
        }
        self.sink = sink
        self.options = options
        self.output = BufferedOutput(sink: sink)
        // In flight: about two frames per thread by bytes, and many more when frames are small.
        // More threads than GCD will run at once would only raise the bound on bytes in flight.
        let workers = min(options.threads, WriterOptions.maxUsefulThreads)
        self.pipeline = OrderedPipeline(threads: workers, maxPending: 64 * (workers + 2),
                                        maxCost: (workers + 2) * options.frameSize) { [unowned self] in
            try self.sink($0)
        }
        do {
            if startsArchive { try output.write(FileHeader().encoded()) }
        } catch {
            discard()
            throw error
        }
    }

    deinit { if !finished { discard() } }

    // MARK: Adding entries

    /// Adds a directory entry.
    public func addDirectory(_ name: String, mode: UInt32 = 0o755, attributes: [String: String] = [:]) throws {
        let entry = try prepareEntry(name, kind: .directory, mode: mode, attributes: attributes, codec: .stored, level: nil)
        try guarded {
            try startEntry(entry)
            try closeEntry()
        }
    }

    /// Adds a whole file from memory. `itemBoundaries` are entry offsets where
    /// items start; frames are cut there too. `itemTypes[k]` is item k's
    /// element type (item 0 starts at offset 0): its frames go into byte planes.
    public func addFile<C: ContiguousCollection>(_ name: String, contents: C, mode: UInt32 = 0o644,
                                                 attributes: [String: String] = [:], itemBoundaries: [UInt64] = [],
                                                 itemTypes: [ElementType?] = [], codec: Codec? = nil, level: Int32? = nil) throws {
        let entry = try prepareEntry(name, kind: .file, mode: mode, attributes: attributes, itemTypes: itemTypes, codec: codec, level: level)
        try guarded {
            try startEntry(entry)
            try contents.withUnsafeBytes { all in
                var start = 0
                for boundary in itemBoundaries.sorted() where boundary > 0 && boundary < UInt64(all.count) {
                    try append(UnsafeRawBufferPointer(rebasing: all[start..<Int(boundary)]))
                    try cutItem()
                    start = Int(boundary)
                }
                try append(UnsafeRawBufferPointer(rebasing: all[start...]))
            }
            try closeEntry()
        }
    }

    /// Adds a file read from `sourcePath`; the mode defaults to the source's
    /// permission bits. `itemBoundaries` are offsets where items start; frames
    /// are cut there too. `size`, when given (what a directory walk saw), is
    /// checked: a file that grew or shrank meanwhile is an error naming it. A
    /// file of one frame or less is then opened and read on a compressing
    /// thread, so a tree of many small files is not read one file at a time.
    public func addFile(_ name: String, fromPath sourcePath: String, mode: UInt32? = nil, size expectedSize: UInt64? = nil,
                        attributes: [String: String] = [:], itemBoundaries: [UInt64] = [], itemTypes: [ElementType?] = [],
                        codec: Codec? = nil, level: Int32? = nil) throws {
        try addFile(name, fromPath: sourcePath, mode: mode, size: expectedSize, identity: nil, attributes: attributes,
                    itemBoundaries: itemBoundaries, itemTypes: itemTypes, codec: codec, level: level)
    }

    /// As above; `identity` is the file a walk listed under `sourcePath`, which it must still be.
    func addFile(_ name: String, fromPath sourcePath: String, mode: UInt32?, size expectedSize: UInt64?, identity: FileIdentity?,
                 attributes: [String: String], itemBoundaries: [UInt64], itemTypes: [ElementType?] = [],
                 codec: Codec? = nil, level: Int32? = nil) throws {
        if let mode, let expectedSize, itemBoundaries.isEmpty {
            let entry = try prepareEntry(name, kind: .file, mode: mode, attributes: attributes, itemTypes: itemTypes, codec: codec, level: level)
            if expectedSize <= UInt64(entry.framer.frameSize) {
                return try guarded {
                    try startEntry(entry)
                    if expectedSize > 0 { try submitFileFrame(path: sourcePath, size: Int(expectedSize), identity: identity) }
                    try closeEntry()
                }
            }
            return try guarded {
                try startEntry(entry)
                try appendFile(sourcePath, source: SystemFile.openRegularFile(sourcePath, identity: identity), itemBoundaries: [],
                               expectedSize: expectedSize)
                try closeEntry()
            }
        }
        let source = try SystemFile.openRegularFile(sourcePath, identity: identity)
        let entry = try prepareEntry(name, kind: .file, mode: try mode ?? source.mode,
                                     attributes: attributes, itemTypes: itemTypes, codec: codec, level: level)
        try guarded {
            try startEntry(entry)
            try appendFile(sourcePath, source: source, itemBoundaries: itemBoundaries, expectedSize: expectedSize)
            try closeEntry()
        }
    }

    /// Reads a file into the open entry frame by frame, cutting at `itemBoundaries`.
    private func appendFile(_ path: String, source: SystemFile? = nil, itemBoundaries: [UInt64], expectedSize: UInt64?) throws {
        let source = try source ?? SystemFile.openRegularFile(path)
        var boundaries = itemBoundaries.sorted()[...]
        var position: UInt64 = 0
        while true {
            while let next = boundaries.first, next <= position {
                if next == position { try cutItem() }
                boundaries = boundaries.dropFirst()
            }
            // Up to a frame, and never across the next item boundary.
            let want = Int(min(UInt64(open?.framer.frameSize ?? options.frameSize), (boundaries.first ?? .max) - position))
            var chunk = try [UInt8](unsafeUninitializedCapacity: want) { buffer, count in
                count = try source.readSome(into: UnsafeMutableRawBufferPointer(buffer))
            }
            if chunk.isEmpty { break }
            let full = chunk.count == want
            position += UInt64(chunk.count)
            try appendOwned(&chunk)
            if !full { break }
        }
        if let expectedSize, position != expectedSize {
            throw ArchiveWriter.changedWhileRead(path, expected: expectedSize, found: position)
        }
    }

    static func changedWhileRead(_ path: String, expected: UInt64, found: UInt64) -> CheckpackError {
        CheckpackError(.io(EIO), "changed while it was read (\(expected) bytes when listed, \(found) read)", path: path)
    }

    /// Starts a file whose content follows through `write(_:)` and `markItemBoundary()`;
    /// `itemTypes` as for `addFile`.
    public func beginFile(_ name: String, mode: UInt32 = 0o644, attributes: [String: String] = [:],
                          itemTypes: [ElementType?] = [], codec: Codec? = nil, level: Int32? = nil) throws {
        let entry = try prepareEntry(name, kind: .file, mode: mode, attributes: attributes, itemTypes: itemTypes, codec: codec, level: level)
        try guarded { try startEntry(entry) }
    }

    /// Appends `bytes` to the file `beginFile` started.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try guarded { try append(bytes) }
    }

    /// Appends `bytes` to the file `beginFile` started.
    public func write<C: ContiguousCollection>(_ bytes: C) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// The next byte written starts a new item, and a new frame.
    public func markItemBoundary() throws {
        try guarded { try cutItem() }
    }

    /// The next byte written starts a new item of `elementType` (nil: none):
    /// its frames go into byte planes. For writers that learn each item's
    /// type only as they reach it.
    public func markItemBoundary(elementType: ElementType?) throws {
        try guarded { try cutItem(elementType: .some(elementType)) }
    }

    /// Ends the file `beginFile` started.
    public func endFile() throws {
        try guarded { try closeEntry() }
    }

    /// Appends every entry of another archive by copying its records as they
    /// are — no decoding, no recompression — and re-basing their offsets in
    /// the index (spec section 11.3). Every frame of `other` is checked (its
    /// stored CRC) as it is copied, so damage in the source is not carried over.
    public func appendEntries(of other: ArchiveReader) throws {
        if let open { throw CheckpackError(.invalidArgument, "entry \"\(open.name)\" is still open", path: path) }
        var names = tree
        try asArgumentError { for entry in other.entries { try names.add(entry.name, kind: entry.kind) } }
        try guarded {
            try pipeline.finish()
            tree = names
            requiredFeatures |= other.requiredFeatures
            let start = UInt64(Format.headerSize), end = other.index.recordsEnd
            let base = output.offset
            // One pass: each entry's records are checked as a stream reader would (every
            // rule and stored CRC) while the very bytes read are written, so a remote
            // source is fetched once. The entries tile the records (checked at open).
            for entry in other.entries {
                try other.forEachFrame(of: entry, stored: true, tee: { [unowned self] in try self.output.write($0) }) { location, frame in
                    guard let frame, CRC32C.checksum(frame.stored) == frame.header.storedCRC else {
                        throw CheckpackError(.checksumMismatch, "stored bytes CRC32C mismatch in appended archive", path: other.source.name,
                                             offset: location.archiveOffset)
                    }
                }
            }
            guard output.offset - base == end - start else {
                throw CheckpackError(.corrupt, "the appended archive's entries do not cover its records", path: other.source.name)
            }
            for entry in other.entries {
                var row = entry.row
                row.recordOffset = row.recordOffset - start + base
                row.endOffset = row.endOffset - start + base
                try addIndexRow(row)
            }
        }
    }

    /// Writes the index and trailer, syncs and renames the archive into place.
    public func finish() throws {
        try guarded {
            guard open == nil else { throw CheckpackError(.invalidArgument, "entry \"\(open?.name ?? "")\" is still open") }
            try pipeline.finish()
            let indexOffset = output.offset
            let indexBytes = index.encoded()
            try output.write(indexBytes)
            try output.write(Trailer(indexOffset: indexOffset, indexLength: UInt64(indexBytes.count),
                                     indexCRC: CRC32C.checksum(indexBytes), requiredFeatures: requiredFeatures).encoded())
            try output.flush()
            // Only now is it known which features the frames used: the header says so too.
            try sink.commit(header: FileHeader(requiredFeatures: requiredFeatures).encoded())
            finished = true
        }
    }

    /// What `SegmentJoin` needs to place a segment: its length, its index
    /// (rows relative to the segment's start) and the features its frames use.
    package struct Segment: Sendable {
        package var length: UInt64
        package var index: [UInt8]
        package var requiredFeatures: UInt32

        package init(length: UInt64, index: [UInt8], requiredFeatures: UInt32) {
            (self.length, self.index, self.requiredFeatures) = (length, index, requiredFeatures)
        }
    }

    /// Ends a segment (see `init(sink:options:startsArchive:)`): every record
    /// is in the sink, which is left open for the caller.
    package func finishSegment() throws -> Segment {
        try guarded {
            guard open == nil else { throw CheckpackError(.invalidArgument, "entry \"\(open?.name ?? "")\" is still open") }
            try pipeline.finish()
            try output.flush()
            finished = true
            return Segment(length: output.offset, index: index.encoded(), requiredFeatures: requiredFeatures)
        }
    }

    /// Abandons the archive: nothing is left at the destination.
    public func cancel() {
        discard()
    }

    // MARK: Internals

    private func guarded<R>(_ body: () throws -> R) throws -> R {
        guard !finished else { throw CheckpackError(.invalidArgument, "writer is finished or failed", path: path) }
        do {
            return try body()
        } catch {
            discard()
            throw error.checkpackContext(path: path)
        }
    }

    private func discard() {
        pipeline?.abandon()
        if !finished { sink.abort() }
        finished = true
    }

    /// Validates a new entry's arguments without touching the archive, so a
    /// rejected name or mode leaves the writer usable.
    private func prepareEntry(_ name: String, kind: EntryKind, mode: UInt32, attributes: [String: String],
                              itemTypes: [ElementType?] = [], codec: Codec?, level: Int32?) throws -> OpenEntry {
        guard !finished else { throw CheckpackError(.invalidArgument, "writer is finished or failed", path: path) }
        if let open { throw CheckpackError(.invalidArgument, "entry \"\(open.name)\" is still open") }
        try asArgumentError { try EntryName.validate(name) }
        guard mode <= Format.maxMode else { throw CheckpackError(.invalidArgument, "mode 0o\(String(mode, radix: 8)) of \"\(name)\" is beyond 0o7777") }
        let pairs = attributes.map { (key: $0.key, value: $0.value) }.sorted { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }
        var attributesLength = 0
        for (key, value) in pairs {
            guard (1...Format.maxAttributeKeyLength).contains(key.utf8.count) else {
                throw CheckpackError(.invalidArgument, "attribute key \"\(key)\" must be 1...\(Format.maxAttributeKeyLength) bytes")
            }
            attributesLength += 6 + key.utf8.count + value.utf8.count
        }
        guard attributesLength <= Format.maxAttributesLength else {
            throw CheckpackError(.invalidArgument, "attributes of \"\(name)\" exceed \(Format.maxAttributesLength) bytes")
        }
        let codec = codec ?? options.codec
        let level = level ?? (codec == options.codec ? options.level : nil) ?? codec.defaultLevel
        try validateLevel(level, codec: codec)
        // Known before any byte is compressed: the index row must fit.
        let rowLength = UInt64(Format.indexRowFixedSize + name.utf8.count)
        guard index.encodedLength + rowLength <= Format.maxIndexLength, index.entryCount < Format.maxEntries else {
            throw CheckpackError(.limitExceeded, "the archive cannot hold more entries (the index would exceed \(Format.maxIndexLength) bytes or \(Format.maxEntries) entries)")
        }
        try asArgumentError { try tree.add(name, kind: kind) }   // last: it records the name only when it succeeds
        let record = EntryRecord(kind: kind, mode: mode, name: name, attributes: pairs, tableExponent: options.tableExponent)
        let framer = EntryFramer(itemTypes: itemTypes, planes: options.bytePlanes && codec != .stored,
                                 frameSize: options.frameSize, planeFrameSize: options.planeFrameSize)
        let entry = OpenEntry(name: name, record: record, codec: codec, level: level, framer: framer)
        return entry
    }

    /// A name the caller passes is a bad argument, not bad data.
    private func asArgumentError(_ body: () throws -> Void) throws {
        do { try body() } catch var error as CheckpackError {
            error.kind = .invalidArgument
            throw error
        }
    }

    private func startEntry(_ entry: OpenEntry) throws {
        open = entry
        try pipeline.submitReady(.entryStart(entry.record, entry.record.encoded()))
    }

    /// Runs `body` on the open entry's framer, each frame it emits going to the pipeline.
    private func framing(_ body: (inout EntryFramer, (EntryFramer.Frame) throws -> Void) throws -> Void) throws {
        guard var entry = open else { throw CheckpackError(.invalidArgument, "no file entry is open") }
        open = nil   // keep the framer's buffer uniquely referenced while it grows
        defer { open = entry }
        let codec = entry.codec, level = entry.level
        try body(&entry.framer) { frame in try self.submit(frame, codec: codec, level: level) }
    }

    private func append(_ bytes: UnsafeRawBufferPointer) throws {
        try framing { framer, emit in try framer.append(bytes, emit: emit) }
    }

    /// Appends a whole buffer the caller gives up, without copying it when
    /// nothing is buffered.
    private func appendOwned(_ chunk: inout [UInt8]) throws {
        try framing { framer, emit in try framer.appendOwned(&chunk, emit: emit) }
    }

    /// Ends the current item; `elementType`, when given, is the next item's.
    private func cutItem(elementType: ElementType?? = nil) throws {
        try framing { framer, emit in try framer.cutItem(elementType: elementType, emit: emit) }
    }

    private func submit(_ frame: EntryFramer.Frame, codec: Codec, level: Int32) throws {
        try pipeline.submit(cost: frame.data.count) {
            let (header, payload) = try FrameEncoder.encode(frame.data, entryOffset: frame.entryOffset, startsItem: frame.startsItem,
                                                            codec: codec, level: level, element: frame.element)
            return Record.frame(header, payload: payload[...])
        }
    }

    /// The whole content of the open entry is the file at `path`, of `size`
    /// bytes (at most a frame): opened, read and encoded on a compressing thread.
    private func submitFileFrame(path: String, size: Int, identity: FileIdentity?) throws {
        guard var entry = open else { throw CheckpackError(.invalidArgument, "no file entry is open") }
        open = nil
        defer { open = entry }
        let frame = entry.framer.reserveFrame(count: size)
        let entryOffset = frame.entryOffset, startsItem = frame.startsItem, element = frame.element
        let codec = entry.codec, level = entry.level
        try pipeline.submit(cost: size) {
            let file = try SystemFile.openRegularFile(path, identity: identity)
            // One byte more than expected: a file that grew is caught too.
            let data = try [UInt8](unsafeUninitializedCapacity: size + 1) { buffer, count in
                count = 0
                while count < buffer.count {
                    let n = try file.readSome(into: UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buffer[count...])))
                    if n == 0 { break }
                    count += n
                }
            }
            guard data.count == size else { throw ArchiveWriter.changedWhileRead(path, expected: UInt64(size), found: UInt64(data.count)) }
            let (header, payload) = try FrameEncoder.encode(data, entryOffset: entryOffset, startsItem: startsItem,
                                                            codec: codec, level: level, element: element)
            return Record.frame(header, payload: payload[...])
        }
    }

    private func closeEntry() throws {
        guard open != nil else { throw CheckpackError(.invalidArgument, "no entry is open") }
        try framing { framer, emit in try framer.close(emit: emit) }
        open = nil
        try pipeline.submitReady(.entryEnd)
    }

    /// Writes one record; runs on the caller's thread, in order. The entry's
    /// validator checks each frame and says which table pages follow it.
    private func sink(_ record: Record) throws {
        switch record {
        case .entryStart(let record, let bytes):
            sinkEntry = (output.offset, bytes, EntryValidator(record: record, recordLength: bytes.count, features: Format.knownRequiredFeatures))
            try output.write(bytes)
        case .frame(let header, let payload):
            guard var entry = sinkEntry else { throw CheckpackError(.invalidArgument, "no entry is open") }
            sinkEntry = nil   // keep the validator's buffers uniquely referenced
            if header.transform == BytePlanes.transformID { requiredFeatures |= Format.bytePlanesFeature }
            try entry.validator.accept(header)
            try output.write(holding: header.encoded()[...])
            try output.write(holding: payload)
            try writePages(&entry.validator)
            sinkEntry = entry
            bytesIn += UInt64(header.decodedLength)
            onProgress?(bytesIn)
        case .entryEnd:
            guard var entry = sinkEntry else { throw CheckpackError(.invalidArgument, "no entry is open") }
            sinkEntry = nil
            try entry.validator.finishFrames()
            try writePages(&entry.validator)
            let end = entry.validator.end
            try entry.validator.close(end)
            let endOffset = output.offset
            try output.write(end.encoded())
            try addIndexRow(IndexRow(recordOffset: entry.offset, endOffset: endOffset, recordBytes: entry.record, validator: entry.validator))
        }
    }

    private func writePages(_ validator: inout EntryValidator) throws {
        while let page = validator.nextExpectedPage {
            try output.write(page)
            try validator.acceptPage(page[...])
        }
    }

    private func addIndexRow(_ row: IndexRow) throws {
        index.add(row)
        guard index.encodedLength <= Format.maxIndexLength, index.entryCount <= Format.maxEntries else {
            throw CheckpackError(.limitExceeded, "the index would exceed \(Format.maxIndexLength) bytes or \(Format.maxEntries) entries")
        }
    }
}
