#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

/// Random access to an archive's bytes: a local file, or anything else that
/// can serve reads at an offset (an object store, memory).
public protocol ArchiveSource: Sendable {
    /// The archive's size in bytes.
    var size: UInt64 { get }
    /// A name for error messages.
    var name: String { get }
    /// Fills `buffer` with the bytes at `offset`, or throws (`truncated` past the end).
    /// Called from several threads at once when `readPlan.concurrency` > 1.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    /// How a read of many frames is grouped into reads of the source.
    var readPlan: ReadPlan { get }
}

/// How a reader groups the frames a range read needs into reads of its
/// source. A local file wants one read per frame, straight into the caller's
/// buffer, decoded on every core; a remote object wants few, large requests,
/// several in flight.
public struct ReadPlan: Sendable, Equatable {
    /// Frames closer than this many bytes share one read (the gap is read and dropped).
    public var mergeGap: UInt64
    /// A merged read covers at most this many bytes (a single frame may be larger).
    public var maxReadSize: UInt64
    /// Merged reads in flight at once, each decoded by the thread that fetched it.
    public var concurrency: Int
    /// Reading the 16-byte file header at open costs a request of its own
    /// when it is not in the tail read: a remote source skips it (the
    /// trailer, checked first, names the same version and features).
    public var readsHeaderAtOpen: Bool

    /// Whether frames are fetched in merged reads (and sequential reads fetched
    /// ahead in chunks of `maxReadSize`), rather than one read per frame.
    var mergesReads: Bool { maxReadSize > 0 }

    /// A plan with these settings (see each property).
    public init(mergeGap: UInt64, maxReadSize: UInt64, concurrency: Int, readsHeaderAtOpen: Bool) {
        self.mergeGap = mergeGap
        self.maxReadSize = maxReadSize
        self.concurrency = concurrency
        self.readsHeaderAtOpen = readsHeaderAtOpen
    }

    /// One read per frame (a stored frame straight into the caller's buffer),
    /// frames decoded on every core: a large read is decode-bound, not read-bound.
    public static let local = ReadPlan(mergeGap: 0, maxReadSize: 0, concurrency: WriterOptions.availableCores, readsHeaderAtOpen: true)
}

extension ArchiveSource {
    public var readPlan: ReadPlan { .local }
}

/// An archive file on disk, read with pread.
public struct FileSource: ArchiveSource {
    let file: SystemFile
    /// The file's size when it was opened.
    public let size: UInt64
    public var name: String { file.path }

    /// Opens the file at `path` for reading.
    public init(path: String) throws {
        file = try SystemFile.openForReading(path)
        size = try file.size
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try file.read(into: buffer, at: offset)
    }
}

/// An archive held in memory.
public struct MemorySource: ArchiveSource {
    /// The archive's bytes.
    public let bytes: [UInt8]
    /// The archive's size in bytes.
    public var size: UInt64 { UInt64(bytes.count) }
    public var name: String

    /// Serves `bytes`; `name` appears in error messages.
    public init(_ bytes: [UInt8], name: String = "<memory>") {
        self.bytes = bytes
        self.name = name
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard offset <= size, UInt64(buffer.count) <= size - offset else {
            throw CheckpackError(.truncated, "read past the end of the archive", offset: offset)
        }
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + buffer.count])) }
    }
}

extension ArchiveSource {
    func read(count: Int, at offset: UInt64) throws -> [UInt8] {
        if count == 0 { return [] }
        return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try read(into: UnsafeMutableRawBufferPointer(buffer), at: offset)
            initialized = count
        }
    }
}

/// Reads an archive through its footer index. Opening costs a bounded read of
/// the file's tail and validates trailer and index completely before any number
/// in them is used. Reads of any byte range find their frames through the
/// entry's frame table (a few pages, validated before use and cached), decode
/// only the frames they overlap, and verify every frame's checksums. Safe to
/// share between threads.
public final class ArchiveReader: Sendable {
    /// Where the archive's bytes come from.
    public let source: any ArchiveSource
    package let index: ArchiveIndex
    /// The archive's required feature bits (spec section 10).
    public let requiredFeatures: UInt32
    private let entryNumbers: [[UInt8]: Int]
    private let decodedFrames = Atomic<Int>(0)
    private let tableBytes = Atomic<Int>(0)
    /// The last frames decoded for partial reads: many small reads near each
    /// other (a zip directory, a header) then decode a frame once, not each time.
    private let recentFrames = Locked<[(key: CacheKey, bytes: [UInt8])]>([])
    static let recentFrameCount = 2
    /// Frame table pages read lately, most recent last.
    private let pages = Locked<[(key: CacheKey, level: Int, number: UInt64, page: LoadedPage)]>([])
    static let cachedPageCount = 16

    /// What the caches hold, a frame or a table page: its entry (by record offset) and its archive offset.
    struct CacheKey: Equatable { var entry: UInt64; var offset: UInt64 }

    /// How many bytes of the tail `open` reads first: the trailer and, for
    /// archives of up to a few hundred entries, the whole index.
    static let tailReadSize: UInt64 = 64 << 10

    /// Opens the archive file at `path`: one read of its tail, the index checked whole.
    public convenience init(path: String) throws {
        try self.init(source: FileSource(path: path))
    }

    /// Opens the archive `source` serves: one read of its tail, the index checked whole.
    public init(source: any ArchiveSource) throws {
        self.source = source
        do {
            let size = source.size
            let tailLength = min(size, ArchiveReader.tailReadSize)
            let tail = try source.read(count: Int(tailLength), at: size - tailLength)
            let headerBytes: [UInt8]? = size == tailLength ? Array(tail.prefix(Format.headerSize))
                : source.readPlan.readsHeaderAtOpen ? try source.read(count: Format.headerSize, at: 0) : nil
            guard size >= Format.minimumArchiveSize else {
                if let headerBytes, size >= UInt64(Format.headerSize) { _ = try FileHeader.decode(headerBytes[...]) }
                throw CheckpackError(.truncated, "\(size) bytes is too short for an archive (at least \(Format.minimumArchiveSize))")
            }
            let header = try headerBytes.map { try FileHeader.decode($0[...]) }
            let trailerOffset = size - UInt64(Format.trailerSize)
            let trailer = try Trailer.decode(tail.suffix(Format.trailerSize), base: trailerOffset)
            guard header == nil || trailer.requiredFeatures == header?.requiredFeatures else {
                throw CheckpackError(.corrupt, "trailer and file header name different required features", offset: trailerOffset)
            }
            guard trailer.indexLength <= Format.maxIndexLength else {
                throw CheckpackError(.limitExceeded, "index length \(trailer.indexLength) exceeds \(Format.maxIndexLength)", offset: trailerOffset)
            }
            guard trailer.indexOffset >= UInt64(Format.headerSize), trailer.indexLength >= UInt64(Format.indexHeaderSize),
                  try trailer.indexOffset.adding(trailer.indexLength, "index end") == trailerOffset else {
                throw CheckpackError(.corrupt, "index at \(trailer.indexOffset) with length \(trailer.indexLength) does not end where the trailer starts (\(trailerOffset))", offset: trailerOffset)
            }
            let indexBytes: [UInt8]
            if trailer.indexOffset >= size - tailLength {
                let start = Int(trailer.indexOffset - (size - tailLength))
                indexBytes = Array(tail[start..<start + Int(trailer.indexLength)])
            } else {
                indexBytes = try source.read(count: Int(trailer.indexLength), at: trailer.indexOffset)
            }
            guard CRC32C.checksum(indexBytes) == trailer.indexCRC else {
                throw CheckpackError(.checksumMismatch, "index CRC32C mismatch", offset: trailer.indexOffset)
            }
            index = try ArchiveIndex.parse(indexBytes, indexOffset: trailer.indexOffset, features: trailer.requiredFeatures)
            requiredFeatures = trailer.requiredFeatures
            var numbers: [[UInt8]: Int] = [:]
            numbers.reserveCapacity(index.entries.count)
            for (number, entry) in index.entries.enumerated() { numbers[entry.row.name] = number }
            entryNumbers = numbers
        } catch {
            throw error.checkpackContext(path: source.name)
        }
    }

    /// Every entry, in archive order.
    public var entries: [ArchiveEntry] { index.entries }

    /// The entry whose name has exactly these UTF-8 bytes (names compare as bytes, not as Unicode text).
    public func entry(named name: String) -> ArchiveEntry? {
        entryNumbers[Array(name.utf8)].map { index.entries[$0] }
    }

    /// Frames decoded by this reader so far (stored frames count too).
    public var framesDecoded: Int { decodedFrames.load(ordering: .relaxed) }
    func decodedFrame() { decodedFrames.add(1, ordering: .relaxed) }
    /// Bytes of frame table pages read so far.
    public var tableBytesRead: Int { tableBytes.load(ordering: .relaxed) }

    // MARK: Entry records

    /// The entry's attributes, from its entry record (checked against the index).
    public func attributes(of entry: ArchiveEntry) throws -> [(key: String, value: String)] {
        try entryRecord(of: entry).attributes
    }

    /// The value of attribute `key` of `entry`, or nil (read from the entry's record, on demand).
    public func attribute(_ key: String, of entry: ArchiveEntry) throws -> String? {
        try attributes(of: entry).first { Array($0.key.utf8) == Array(key.utf8) }?.value
    }

    func entryRecord(of entry: ArchiveEntry) throws -> EntryRecord {
        do {
            let bytes = try source.read(count: entry.row.entryRecordLength, at: entry.recordOffset)
            let record = try EntryRecord.decode(bytes[...])
            try checkRecord(record, bytes: bytes, against: entry)
            return record
        } catch {
            throw error.checkpackContext(path: source.name, entry: entry.name, offset: entry.recordOffset)
        }
    }

    func checkRecord(_ record: EntryRecord, bytes: [UInt8], against entry: ArchiveEntry) throws {
        let row = IndexRow(recordOffset: entry.recordOffset, endOffset: entry.endOffset, size: entry.size, frameCount: entry.frameCount,
                           contentCRC: entry.contentCRC, recordCRC: ByteReader.u32(bytes.suffix(4)),
                           attributesLength: UInt32(record.attributesLength), mode: record.mode, kind: record.kind,
                           tableExponent: record.tableExponent, frameKinds: entry.row.frameKinds, name: Array(record.name.utf8))
        guard row == entry.row else { throw CheckpackError(.corrupt, "entry record differs from its row in the index") }
    }

    /// Where items start inside the entry (the frames marked as item starts), in increasing order.
    public func itemBoundaries(of entry: ArchiveEntry) throws -> [UInt64] {
        var boundaries: [UInt64] = []
        try forEachFrameRow(of: entry) { offset, row in if row.startsItem { boundaries.append(offset) } }
        return boundaries
    }

    /// Where each frame of the entry lies and how long it is stored, from the
    /// frame table alone (no frame is read).
    package func frameExtents(of entry: ArchiveEntry) throws -> [FrameExtent] {
        var extents: [FrameExtent] = []
        try forEachFrameRow(of: entry) { offset, row in
            extents.append(FrameExtent(entryRange: offset..<offset + UInt64(row.decodedLength), storedLength: row.storedLength,
                                       startsItem: row.startsItem))
        }
        return extents
    }

    /// Every frame of the entry with its header, in order (reads each header: O(frames)).
    package func frames(of entry: ArchiveEntry) throws -> [FrameLocation] {
        var frames: [FrameLocation] = []
        try forEachFrame(of: entry, stored: false) { location, _ in frames.append(location) }
        return frames
    }

    // MARK: Frame table

    /// A leaf page of an entry's frame table, with where its frames are.
    struct Leaf: Sendable {
        let page: TablePage
        /// The number of its first frame in the entry.
        let firstFrame: UInt64
        /// Entry offset where each frame ends.
        let entryOffsets: [UInt64]
        /// Archive offset of each frame's header.
        let frameOffsets: [UInt64]
        /// One past the last byte the leaf covers.
        var endOffset: UInt64 { entryOffsets.last ?? page.firstOffset }

        func frameStart(_ i: Int) -> UInt64 { i == 0 ? page.firstOffset : entryOffsets[i - 1] }

        /// The first frame that ends after `offset`.
        func frameIndex(containing offset: UInt64) -> Int {
            var low = 0, high = entryOffsets.count
            while low < high {
                let mid = (low + high) / 2
                if entryOffsets[mid] > offset { high = mid } else { low = mid + 1 }
            }
            return low
        }
    }

    /// A table page as loaded and checked.
    enum LoadedPage: Sendable {
        case inner(TablePage)
        case leaf(Leaf)
    }

    /// The leaf of the frame table that holds entry offset `offset` (< size):
    /// from the root down, each page checked against its parent's row.
    func leaf(of entry: ArchiveEntry, containing offset: UInt64) throws -> Leaf {
        let shape = entry.tableShape
        guard var level = shape.rootLevel else { throw CheckpackError(.corrupt, "entry has no frames") }
        var pageNumber: UInt64 = 0
        var position = entry.endOffset - UInt64(shape.rootLength)   // the root comes right before the entry end record
        var range = UInt64(0)..<entry.size
        guard position >= entry.dataStart else { throw CheckpackError(.corrupt, "frame table root lies before the entry's data") }
        while true {
            let rows: [TablePage.ChildRow]
            switch try loadPage(entry, level: level, number: pageNumber, at: position, range: range) {
            case .leaf(let leaf): return leaf
            case .inner(let page): rows = page.children
            }
            // The last child whose range starts at or before `offset`.
            var low = 0, high = rows.count - 1
            while low < high {
                let mid = (low + high + 1) / 2
                if rows[mid].firstOffset <= offset { low = mid } else { high = mid - 1 }
            }
            let upper = low + 1 < rows.count ? rows[low + 1].firstOffset : range.upperBound
            range = rows[low].firstOffset..<upper
            pageNumber = pageNumber * shape.fanout + UInt64(low)
            position = try entry.recordOffset.adding(rows[low].position, "page position")
            level -= 1
        }
    }

    /// Reads and checks page `number` of `level`, expected at archive offset
    /// `position` and covering `range`, or takes it from the cache.
    private func loadPage(_ entry: ArchiveEntry, level: Int, number: UInt64, at position: UInt64, range: Range<UInt64>) throws -> LoadedPage {
        let key = CacheKey(entry: entry.recordOffset, offset: position)
        if let cached = pages.withLock({ cache in cache.first { $0.key == key && $0.level == level && $0.number == number }?.page }) {
            return cached
        }
        let shape = entry.tableShape
        guard number < shape.pagesPerLevel[level] else { throw CheckpackError(.corrupt, "frame table has too few pages") }
        let rows = shape.rows(level: level, page: number)
        let length = TableShape.pageLength(level: level, rows: rows)
        let end = try position.adding(UInt64(length), "page end")
        guard position >= entry.dataStart, end <= entry.endOffset else {
            throw CheckpackError(.corrupt, "frame table page at \(position) lies outside its entry")
        }
        let bytes = try source.read(count: length, at: position)
        tableBytes.add(length, ordering: .relaxed)
        let loaded: LoadedPage
        do {
            let page = try TablePage.decode(bytes[...], level: level, rows: rows)
            guard page.firstOffset == range.lowerBound else {
                throw CheckpackError(.corrupt, "frame table page starts at entry offset \(page.firstOffset), its parent says \(range.lowerBound)")
            }
            loaded = level == 0 ? .leaf(try checkedLeaf(page, number: number, at: position, range: range, entry: entry))
                                : .inner(try checkedInner(page, number: number, at: position, range: range, entry: entry))
        } catch {
            throw error.checkpackContext(offset: position)
        }
        pages.withLock { cache in
            cache.removeAll { $0.key == key }
            cache.append((key, level, number, loaded))
            if cache.count > ArchiveReader.cachedPageCount { cache.removeFirst() }
        }
        return loaded
    }

    /// An inner page's children are in order, inside the entry, before the
    /// page itself, and cover `range` in increasing pieces.
    private func checkedInner(_ page: TablePage, number: UInt64, at position: UInt64, range: Range<UInt64>,
                              entry: ArchiveEntry) throws -> TablePage {
        let shape = entry.tableShape
        let relative = position - entry.recordOffset
        var previousEnd = entry.dataStart - entry.recordOffset
        for (i, child) in page.children.enumerated() {
            let childNumber = number * shape.fanout + UInt64(i)
            let childLength = UInt64(TableShape.pageLength(level: page.level - 1, rows: shape.rows(level: page.level - 1, page: childNumber)))
            let childEnd = try child.position.adding(childLength, "page end")
            let last = i == page.children.count - 1
            guard child.position >= previousEnd, last ? childEnd == relative : childEnd <= relative else {
                throw CheckpackError(.corrupt, "frame table page's child \(i) at \(child.position) is out of place")
            }
            guard i == 0 ? child.firstOffset == range.lowerBound : child.firstOffset > page.children[i - 1].firstOffset,
                  child.firstOffset < range.upperBound else {
                throw CheckpackError(.corrupt, "frame table page's child \(i) starts at entry offset \(child.firstOffset), out of order")
            }
            previousEnd = childEnd
        }
        return page
    }

    /// A leaf's frames cover exactly `range` and lie right before it, inside the entry.
    private func checkedLeaf(_ page: TablePage, number: UInt64, at position: UInt64, range: Range<UInt64>,
                             entry: ArchiveEntry) throws -> Leaf {
        var ends: [UInt64] = []
        var lengths: [UInt64] = []
        ends.reserveCapacity(page.frames.count)
        lengths.reserveCapacity(page.frames.count)
        var end = range.lowerBound
        var framesLength: UInt64 = 0
        for row in page.frames {
            end = try end.adding(UInt64(row.decodedLength), "entry offset")
            ends.append(end)
            let length = UInt64(Format.frameHeaderSize) + UInt64(row.storedLength)
            lengths.append(length)
            framesLength += length
        }
        guard end == range.upperBound else {
            throw CheckpackError(.corrupt, "frame table page covers \(end - range.lowerBound) bytes, its parent says \(range.count)")
        }
        guard position - entry.dataStart >= framesLength else {
            throw CheckpackError(.corrupt, "frame table page's frames would start before the entry's data")
        }
        var offsets: [UInt64] = []
        offsets.reserveCapacity(lengths.count)
        var at = position - framesLength
        for length in lengths {
            offsets.append(at)
            at += length
        }
        return Leaf(page: page, firstFrame: number * entry.tableShape.fanout, entryOffsets: ends, frameOffsets: offsets)
    }

    /// Visits every frame's table row in order with its entry offset.
    func forEachFrameRow(of entry: ArchiveEntry, _ body: (UInt64, TablePage.FrameRow) throws -> Void) throws {
        var offset: UInt64 = 0
        do {
            while offset < entry.size {
                let leaf = try leaf(of: entry, containing: offset)
                for (i, row) in leaf.page.frames.enumerated() { try body(leaf.frameStart(i), row) }
                offset = leaf.endOffset
            }
        } catch {
            throw error.checkpackContext(path: source.name, entry: entry.name)
        }
    }

    // MARK: Walking an entry's records

    /// Reads the entry's records front to back, checked by the same rules as
    /// the stream reader (`EntryValidator`) and against the index row; gives
    /// each frame with its stored bytes (when `stored`) to `body`. Damage in a
    /// frame's stored bytes is the body's to find (decode or check the CRC).
    /// `tee`, when given, sees every byte of the entry's records as it is read.
    func forEachFrame(of entry: ArchiveEntry, stored: Bool, tee: ((UnsafeRawBufferPointer) throws -> Void)? = nil,
                      _ body: (FrameLocation, StreamFrame?) throws -> Void) throws {
        let range = RangeSource(source: source, range: entry.recordOffset..<entry.endOffset + UInt64(Format.entryEndSize))
        let input = SequentialInput(source: tee.map { TeeSource(range, observe: $0) } ?? range)
        let records = RecordReader(input: input, offset: entry.recordOffset, features: requiredFeatures, readStored: stored)
        var closed: IndexRow? = nil
        records.onEntryClosed = { closed = $0 }
        do {
            // The row built from the records read (entry record included) must equal the index's.
            guard case .entryStart = try records.next() else { throw CheckpackError(.corrupt, "expected an entry record") }
            while true {
                guard let next = try records.next() else { throw CheckpackError(.corrupt, "expected an entry end record") }
                if case .frame(let frame) = next {
                    try body(FrameLocation(archiveOffset: records.recordOffset, header: frame.header), stored ? frame : nil)
                } else if case .entryEnd = next {
                    break
                }
            }
            guard closed == entry.row else { throw CheckpackError(.corrupt, "entry's records differ from its row in the index") }
        } catch {
            throw error.checkpackContext(path: source.name, entry: entry.name, offset: records.offset)
        }
    }

    // MARK: Range reads

    /// Reads `count` bytes of `entry` starting at `offset`.
    public func read(_ entry: ArchiveEntry, offset: UInt64 = 0, count: Int? = nil) throws -> [UInt8] {
        guard offset <= entry.size else {
            throw CheckpackError(.invalidArgument, "offset \(offset) is past the end (\(entry.size) bytes)", path: source.name, entry: entry.name)
        }
        let available = entry.size - offset
        if let count, count < 0 {
            throw CheckpackError(.invalidArgument, "negative length \(count)", path: source.name, entry: entry.name)
        }
        let length = count.map(UInt64.init) ?? available
        guard length <= available else {
            throw CheckpackError(.invalidArgument, "range \(offset)+\(length) is past the end (\(entry.size) bytes)", path: source.name, entry: entry.name)
        }
        let n = try Int(checked: length, "read length")
        // Zero bytes: no uninitialized-capacity array (it would write to the shared empty array).
        if n == 0 { return [] }
        return try [UInt8](unsafeUninitializedCapacity: n) { buffer, initialized in
            try read(entry, offset: offset, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = n
        }
    }

    /// Fills `buffer` with the entry's bytes at `offset`. Only the frames the
    /// range overlaps are read and decoded; whole frames decode straight into
    /// `buffer`. The frames are read as the source's `readPlan` says: one read
    /// each from a local file, few merged and concurrent requests from a
    /// remote object. On error the buffer's contents are unspecified.
    public func read(_ entry: ArchiveEntry, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try read([RangeRead(entry: entry, offset: offset, buffer: buffer)])
    }

    /// One range of a batch read: `buffer.count` bytes of `entry` from `offset`.
    public struct RangeRead {
        /// The entry to read from.
        public var entry: ArchiveEntry
        /// Where in the entry the range starts.
        public var offset: UInt64
        /// Receives the range: `buffer.count` bytes.
        public var buffer: UnsafeMutableRawBufferPointer

        /// A read of `buffer.count` bytes of `entry` from `offset` into `buffer`.
        public init(entry: ArchiveEntry, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) {
            self.entry = entry
            self.offset = offset
            self.buffer = buffer
        }
    }

    /// Fills every range's buffer, planning their frames together: frames of
    /// different ranges that lie close in the archive share a read (a request,
    /// for a remote object), and reads run concurrently as the source's
    /// `readPlan` allows. A torch load reads all its tensors this way.
    public func read(_ ranges: [RangeRead]) throws {
        var pieces: [PlannedFrame] = []
        var piecesOfRange: [Range<Int>] = []
        for (number, range) in ranges.enumerated() {
            let end = range.offset.addingReportingOverflow(UInt64(range.buffer.count))
            guard !end.overflow, end.partialValue <= range.entry.size else {
                throw CheckpackError(.invalidArgument, "range \(range.offset)+\(range.buffer.count) is past the end (\(range.entry.size) bytes)",
                                     path: source.name, entry: range.entry.name)
            }
            let first = pieces.count
            for var piece in try plannedFrames(range.entry, range: range.offset..<end.partialValue) {
                piece.range = number
                pieces.append(piece)
            }
            piecesOfRange.append(first..<pieces.count)
        }
        // In archive order (a stable sort: a range's own pieces keep their order), for merging.
        let order = pieces.indices.sorted { (pieces[$0].frame.archiveOffset, $0) < (pieces[$1].frame.archiveOffset, $1) }
        // Frames grouped into reads, each with the archive bytes it covers.
        let (runs, spans) = closeGroups(order.map { pieces[$0].span }, gap: source.readPlan.mergeGap, maxLength: source.readPlan.maxReadSize)
        // A read of a whole entry also checks the entry's content CRC, which
        // follows from the frames' decoded CRCs (each checked as it is decoded).
        let crcs = Locked([UInt32](repeating: 0, count: pieces.count))
        let readAhead = (source as? any ReadAheadSource).map { ReadAhead(source: $0, spans: spans) }
        try forEachConcurrently(runs.count, width: source.readPlan.concurrency) { r in
            readAhead?.reached(r)
            let first = spans[r].lowerBound
            // Locally a frame reads on its own (a stored one straight into the buffer); else a run is one read.
            let bytes = runs[r].count == 1 && !source.readPlan.mergesReads ? nil : try fetch(spans[r])
            for i in runs[r].lazy.map({ order[$0] }) {
                let piece = pieces[i]
                let range = ranges[piece.range]
                let target = UnsafeMutableRawBufferPointer(rebasing: range.buffer[Int(piece.wanted.lowerBound - range.offset)..<Int(piece.wanted.upperBound - range.offset)])
                do {
                    let stored = bytes.map { bytes in
                        let start = Int(piece.frame.archiveOffset - first)
                        return bytes[start..<start + Int(piece.frameEnd - piece.frame.archiveOffset)]
                    }
                    if piece.isWholeFrame {
                        let header = try decodeFrame(piece.frame, bytes: stored, into: target)
                        crcs.withLock { $0[i] = header.decodedCRC }
                    } else {
                        let key = CacheKey(entry: range.entry.recordOffset, offset: piece.frame.archiveOffset)
                        let decoded = try recentlyDecoded(key) ?? remember(key, try decodeFrame(piece.frame, bytes: stored))
                        let start = Int(piece.wanted.lowerBound - piece.frame.entryOffset)
                        decoded.withUnsafeBytes {
                            target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + target.count]))
                        }
                    }
                } catch {
                    throw error.checkpackContext(path: source.name, entry: range.entry.name, frame: Int(clamping: piece.number),
                                                 offset: piece.frame.archiveOffset)
                }
            }
        }
        let decodedCRCs = crcs.withLock { $0 }
        for (number, range) in ranges.enumerated() where range.offset == 0 && UInt64(range.buffer.count) == range.entry.size {
            let contentCRC = piecesOfRange[number].reduce(UInt32(0)) {
                CRC32C.combine($0, decodedCRCs[$1], length: UInt64(pieces[$1].frame.row.decodedLength))
            }
            guard contentCRC == range.entry.contentCRC else {
                throw CheckpackError(.checksumMismatch, "entry content CRC32C mismatch", path: source.name, entry: range.entry.name,
                                     offset: range.entry.endOffset)
            }
        }
    }

    /// A frame a range read needs: where it is, and which of its bytes are wanted.
    struct PlannedFrame {
        var frame: ExpectedFrame
        /// The frame's number in its entry.
        var number: UInt64
        /// The entry bytes wanted from it.
        var wanted: Range<UInt64>
        /// Archive offset one past its stored bytes.
        var frameEnd: UInt64
        /// Which range of a batch read wants it.
        var range = 0

        var isWholeFrame: Bool {
            wanted.lowerBound == frame.entryOffset && wanted.upperBound == frame.entryOffset + UInt64(frame.row.decodedLength)
        }

        /// The archive bytes of the frame: its header and stored bytes.
        var span: Range<UInt64> { frame.archiveOffset..<frameEnd }
    }

    /// The frames that hold `range` of the entry, in order, found through its frame table.
    func plannedFrames(_ entry: ArchiveEntry, range: Range<UInt64>) throws -> [PlannedFrame] {
        var frames: [PlannedFrame] = []
        var position = range.lowerBound
        while position < range.upperBound {
            let leaf: Leaf
            do {
                leaf = try self.leaf(of: entry, containing: position)
            } catch {
                throw error.checkpackContext(path: source.name, entry: entry.name)
            }
            var i = leaf.frameIndex(containing: position)
            guard i < leaf.page.frames.count else {
                throw CheckpackError(.corrupt, "frame table leaf does not hold entry offset \(position)", path: source.name, entry: entry.name)
            }
            while i < leaf.page.frames.count, position < range.upperBound {
                let row = leaf.page.frames[i]
                let frame = ExpectedFrame(archiveOffset: leaf.frameOffsets[i], entryOffset: leaf.frameStart(i), row: row)
                let upper = min(leaf.entryOffsets[i], range.upperBound)
                // Sums of checked table rows: no overflow (the leaf was checked against the entry's bounds).
                let frameEnd = frame.archiveOffset + UInt64(Format.frameHeaderSize) + UInt64(row.storedLength)
                frames.append(PlannedFrame(frame: frame, number: leaf.firstFrame + UInt64(i), wanted: position..<upper, frameEnd: frameEnd))
                position = upper
                i += 1
            }
        }
        return frames
    }

    /// Reads `range` of the archive in one read of the source.
    private func fetch(_ range: Range<UInt64>) throws -> [UInt8] {
        try source.read(count: try Int(checked: range.upperBound - range.lowerBound, "read length"), at: range.lowerBound)
    }

    private func recentlyDecoded(_ key: CacheKey) -> [UInt8]? {
        recentFrames.withLock { frames in frames.first { $0.key == key }?.bytes }
    }

    private func remember(_ key: CacheKey, _ bytes: [UInt8]) -> [UInt8] {
        recentFrames.withLock { frames in
            frames.removeAll { $0.key == key }
            frames.append((key, bytes))
            if frames.count > ArchiveReader.recentFrameCount { frames.removeFirst() }
        }
        return bytes
    }

    /// A frame as its table row describes it.
    struct ExpectedFrame {
        var archiveOffset: UInt64
        var entryOffset: UInt64
        var row: TablePage.FrameRow
    }

    /// Decodes one whole frame.
    func decodeFrame(_ frame: ExpectedFrame, bytes: ArraySlice<UInt8>? = nil) throws -> [UInt8] {
        let n = Int(frame.row.decodedLength)
        return try [UInt8](unsafeUninitializedCapacity: n) { buffer, initialized in
            _ = try decodeFrame(frame, bytes: bytes, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = n
        }
    }

    /// Checks a frame's header against the table row and both checksums, and
    /// decodes into `output` (exactly the decoded length). `bytes` are the
    /// frame's header and stored bytes when already fetched; otherwise they
    /// are read here, a stored frame's straight into `output`.
    @discardableResult
    func decodeFrame(_ frame: ExpectedFrame, bytes fetched: ArraySlice<UInt8>? = nil, into output: UnsafeMutableRawBufferPointer) throws -> FrameHeader {
        // S = D only for a stored frame (a compressed one has S < D).
        let stored = frame.row.storedLength == frame.row.decodedLength
        let bytes = try fetched ?? source.read(count: Format.frameHeaderSize + (stored ? 0 : Int(frame.row.storedLength)), at: frame.archiveOffset)[...]
        let header = try FrameHeader.decode(bytes.prefix(Format.frameHeaderSize))
        guard header.entryOffset == frame.entryOffset, header.storedLength == frame.row.storedLength,
              header.decodedLength == frame.row.decodedLength, header.startsItem == frame.row.startsItem else {
            throw CheckpackError(.corrupt, "frame header differs from its row in the frame table")
        }
        guard header.transform == 0 || requiredFeatures & Format.bytePlanesFeature != 0 else {
            throw CheckpackError(.corrupt, "a frame uses the byte-plane transform but the archive does not declare required feature bit 0")
        }
        if stored && fetched == nil {
            try source.read(into: output, at: frame.archiveOffset + UInt64(Format.frameHeaderSize))
        } else {
            try bytes.withUnsafeBytes { raw in
                let payload = UnsafeRawBufferPointer(rebasing: raw[Format.frameHeaderSize...])
                if stored {
                    output.copyMemory(from: payload)
                } else {
                    guard CRC32C.update(0, payload) == header.storedCRC else {
                        throw CheckpackError(.checksumMismatch, "stored bytes CRC32C mismatch")
                    }
                    try FrameCodec.decode(payload, header: header, into: output)
                }
            }
        }
        decodedFrame()
        guard CRC32C.update(0, UnsafeRawBufferPointer(output)) == header.decodedCRC else {
            throw CheckpackError(.checksumMismatch, header.codec == .stored ? "stored bytes CRC32C mismatch" : "decoded bytes CRC32C mismatch")
        }
        return header
    }
}

/// Byte ranges, in order of their starts, grouped: a range joins the group
/// before it when it starts at most `gap` bytes past the furthest end so far
/// (ranges may overlap: two reads can want one frame) and the group then
/// spans at most `maxLength` bytes. Returns each group's indices and the
/// bytes it spans. Frames grouped into reads, and reads into stretches to
/// fetch ahead, follow this one rule.
func closeGroups(_ ranges: [Range<UInt64>], gap: UInt64, maxLength: UInt64) -> (members: [Range<Int>], spans: [Range<UInt64>]) {
    var members: [Range<Int>] = []
    var spans: [Range<UInt64>] = []
    guard var current = ranges.first else { return ([], []) }
    var start = 0
    for i in ranges.indices.dropFirst() {
        let range = ranges[i]
        let end = max(current.upperBound, range.upperBound)
        if (range.lowerBound > current.upperBound && range.lowerBound - current.upperBound > gap) || end - current.lowerBound > maxLength {
            members.append(start..<i)
            spans.append(current)
            start = i
            current = range
        } else {
            current = current.lowerBound..<end
        }
    }
    members.append(start..<ranges.count)
    spans.append(current)
    return (members, spans)
}

/// A frame as the entry's frame table describes it.
package struct FrameExtent: Sendable, Equatable {
    /// The bytes of its entry that the frame holds.
    public let entryRange: Range<UInt64>
    public let storedLength: UInt32
    /// An item starts at the frame's first byte.
    public let startsItem: Bool
}

/// A frame found by walking an entry's records: where its header is, and the header.
package struct FrameLocation: Sendable, Equatable {
    /// Archive offset of the frame's 40-byte header; its stored bytes follow it.
    public let archiveOffset: UInt64
    public let header: FrameHeader

    /// The bytes of its entry that the frame holds.
    public var entryRange: Range<UInt64> { header.entryOffset..<header.entryOffset + UInt64(header.decodedLength) }
}

/// A byte range of an archive source, read front to back; skipping moves
/// ahead without reading. From a source that wants concurrent reads (a
/// remote object), chunks of `readPlan.maxReadSize` bytes are fetched ahead,
/// `readPlan.concurrency` at a time: memory stays at that many chunks.
final class RangeSource: SequentialSource {
    let source: any ArchiveSource
    private var position: UInt64
    private let end: UInt64
    private var ahead: [Prefetch] = []
    /// Where the next chunk to fetch starts.
    private var nextFetch: UInt64
    var name: String { source.name }

    init(source: any ArchiveSource, range: Range<UInt64>) {
        self.source = source
        position = range.lowerBound
        end = min(range.upperBound, source.size)
        nextFetch = position
    }

    func readSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = Int(min(UInt64(buffer.count), end - position))
        guard n > 0 else { return 0 }
        let plan = source.readPlan
        guard plan.mergesReads else {
            try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<n]), at: position)
            position += UInt64(n)
            return n
        }
        while ahead.count < plan.concurrency, nextFetch < end {
            let range = nextFetch..<min(end, nextFetch + plan.maxReadSize)
            ahead.append(Prefetch(source, range))
            nextFetch = range.upperBound
        }
        let chunk = ahead[0]
        let bytes = try chunk.bytes()
        let start = Int(position - chunk.range.lowerBound)
        let count = min(n, bytes.count - start)
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + count])) }
        position += UInt64(count)
        if position == chunk.range.upperBound { ahead.removeFirst() }
        return count
    }

    func skip(_ count: UInt64) -> UInt64 {
        let n = min(count, end - position)
        position += n
        ahead.removeAll { $0.range.upperBound <= position }
        nextFetch = max(nextFetch, position)
        return n
    }
}

/// A sequential source that hands every byte it reads to `observe` as well
/// (it never skips: skipped bytes are read, so `observe` sees them too).
final class TeeSource: SequentialSource {
    let inner: any SequentialSource
    let observe: (UnsafeRawBufferPointer) throws -> Void
    var name: String { inner.name }

    init(_ inner: any SequentialSource, observe: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        self.inner = inner
        self.observe = observe
    }

    func readSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try inner.readSome(into: buffer)
        if n > 0 { try observe(UnsafeRawBufferPointer(rebasing: buffer[..<n])) }
        return n
    }
}

/// One chunk of a source, read on a thread of its own.
private final class Prefetch: @unchecked Sendable {
    let range: Range<UInt64>
    /// Set once, under `mutex`.
    private var result: Result<[UInt8], any Error>? = nil
    // Allocated: a pthread object must not move, and a property's address is not fixed.
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init(_ source: any ArchiveSource, _ range: Range<UInt64>) {
        self.range = range
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        runOnNewThread { [self] in
            let outcome = Result { try source.read(count: Int(range.upperBound - range.lowerBound), at: range.lowerBound) }
            pthread_mutex_lock(mutex)
            result = outcome
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Waits for the chunk.
    func bytes() throws -> [UInt8] {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            if let result { return try result.get() }
            pthread_cond_wait(condition, mutex)
        }
    }
}
