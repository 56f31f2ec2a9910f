// An entry's frame table (spec section 4.5): a tree of pages written among
// the entry's frames, in post-order, so that a reader finds the frame holding
// any entry offset by reading a few pages, and a writer keeps only one open
// page per level.

/// How many pages each level of an entry's frame table has. The shape follows
/// from the frame count and the page fanout alone.
struct TableShape: Sendable {
    let frameCount: UInt64
    let exponent: UInt8
    /// Pages per level, leaves first; the last level holds the root alone.
    /// Empty for an entry without frames.
    let pagesPerLevel: [UInt64]

    var fanout: UInt64 { 1 << UInt64(exponent) }
    /// The root's level; nil when there are no frames.
    var rootLevel: Int? { pagesPerLevel.isEmpty ? nil : pagesPerLevel.count - 1 }

    init(frameCount: UInt64, exponent: UInt8) {
        self.frameCount = frameCount
        self.exponent = exponent
        var levels: [UInt64] = []
        var below = frameCount
        let fanout = UInt64(1) << UInt64(exponent)
        while below > 0, levels.last != 1 {
            below = below / fanout + (below % fanout == 0 ? 0 : 1)
            levels.append(below)
        }
        pagesPerLevel = levels
    }

    /// Rows of page `page` of `level`: one per frame (level 0) or per page of the level below.
    func rows(level: Int, page: UInt64) -> Int {
        let below = level == 0 ? frameCount : pagesPerLevel[level - 1]
        return Int(min(fanout, below - page * fanout))
    }

    static func rowSize(level: Int) -> Int { level == 0 ? 8 : 16 }

    static func pageLength(level: Int, rows: Int) -> Int {
        Format.pageHeaderSize + rows * rowSize(level: level) + 4
    }

    var rootLength: Int {
        guard let root = rootLevel else { return 0 }
        return TableShape.pageLength(level: root, rows: rows(level: root, page: 0))
    }

    /// Bytes of all pages together (overflow-checked: the frame count is untrusted).
    var totalPageBytes: UInt64 {
        get throws {
            var total: UInt64 = 0
            for (level, pages) in pagesPerLevel.enumerated() {
                let below = level == 0 ? frameCount : pagesPerLevel[level - 1]
                let rowBytes = try below.multiplied(by: UInt64(TableShape.rowSize(level: level)), "frame table length")
                let heads = try pages.multiplied(by: UInt64(Format.pageHeaderSize + 4), "frame table length")
                total = try total.adding(rowBytes, "frame table length").adding(heads, "frame table length")
            }
            return total
        }
    }
}

/// One page of a frame table, decoded.
struct TablePage: Sendable {
    var level: Int
    /// Entry offset of the first byte the page covers.
    var firstOffset: UInt64
    /// Level 0: one row per frame.
    var frames: [FrameRow] = []
    /// Level ≥ 1: one row per child page.
    var children: [ChildRow] = []

    struct FrameRow: Sendable, Equatable {
        var storedLength: UInt32
        var decodedLength: UInt32
        var startsItem: Bool
    }

    struct ChildRow: Sendable, Equatable {
        /// Where the child page starts, counted from the first byte of the entry record.
        var position: UInt64
        /// Entry offset of the first byte the child covers.
        var firstOffset: UInt64
    }

    var rowCount: Int { level == 0 ? frames.count : children.count }

    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: TableShape.pageLength(level: level, rows: rowCount))
        w.raw(Format.pageTag)
        w.u8(UInt8(level))
        w.u8(0)
        w.u16(0)
        w.u32(UInt32(rowCount))
        w.u64(firstOffset)
        for row in frames {
            w.u32(row.storedLength)
            w.u32(row.decodedLength | (row.startsItem ? TablePage.startsItemBit : 0))
        }
        for row in children {
            w.u64(row.position)
            w.u64(row.firstOffset)
        }
        w.crcOfAll()
        return w.bytes
    }

    static let startsItemBit: UInt32 = 1 << 31

    /// Decodes a page and checks everything it says about itself: tag, CRC,
    /// level and row count as the table's shape expects, and rows within the
    /// format's limits. Relations to other pages are the caller's to check.
    static func decode(_ bytes: ArraySlice<UInt8>, level: Int, rows: Int) throws -> TablePage {
        let expectedLength = TableShape.pageLength(level: level, rows: rows)
        guard bytes.count == expectedLength else {
            throw CheckpackError(.truncated, "frame table page needs \(expectedLength) bytes, has \(bytes.count)")
        }
        var r = ByteReader(bytes)
        guard try r.take(4).elementsEqual(Format.pageTag) else { throw CheckpackError(.corrupt, "expected a frame table page (FTBL)") }
        let foundLevel = try r.u8()
        let reserved1 = try r.u8()
        let reserved2 = try r.u16()
        let count = try r.u32()
        let first = try r.u64()
        let body = try r.take(rows * TableShape.rowSize(level: level))
        let crc = try r.u32()
        guard CRC32C.checksum(bytes.prefix(expectedLength - 4)) == crc else {
            throw CheckpackError(.checksumMismatch, "frame table page CRC32C mismatch")
        }
        guard reserved1 == 0, reserved2 == 0 else { throw CheckpackError(.corrupt, "frame table page reserved field is not zero") }
        guard Int(foundLevel) == level, Int(count) == rows else {
            throw CheckpackError(.corrupt, "frame table page is level \(foundLevel) with \(count) rows, expected level \(level) with \(rows)")
        }
        var page = TablePage(level: level, firstOffset: first)
        var rowReader = ByteReader(body)
        if level == 0 {
            page.frames.reserveCapacity(rows)
            for _ in 0..<rows {
                let stored = try rowReader.u32()
                let field = try rowReader.u32()
                let decoded = field & ~startsItemBit
                // Every frame has 1 ≤ S ≤ D ≤ 64 MiB (section 4.2).
                guard decoded >= 1, decoded <= Format.maxFrameSize, stored >= 1, stored <= decoded else {
                    throw CheckpackError(.corrupt, "frame table row has stored length \(stored) and decoded length \(decoded)")
                }
                page.frames.append(FrameRow(storedLength: stored, decodedLength: decoded, startsItem: field & startsItemBit != 0))
            }
            guard !(first == 0 && page.frames[0].startsItem) else {
                throw CheckpackError(.corrupt, "the first frame of an entry is marked as an item start")
            }
        } else {
            page.children.reserveCapacity(rows)
            for _ in 0..<rows {
                page.children.append(ChildRow(position: try rowReader.u64(), firstOffset: try rowReader.u64()))
            }
        }
        return page
    }
}

/// Builds an entry's frame table as its frames go by: the writer writes the
/// pages it returns, and every reader that walks records (stream, verify,
/// salvage) builds the same pages and requires the archive to hold exactly them.
struct FrameTableBuilder {
    let exponent: UInt8
    /// Bytes of the entry's records so far, from the first byte of its entry record.
    private(set) var position: UInt64
    private var levels: [OpenPage] = []

    private struct OpenPage {
        var page: TablePage
        var pagesWritten: UInt64 = 0
    }

    init(exponent: UInt8, entryRecordLength: Int) {
        self.exponent = exponent
        self.position = UInt64(entryRecordLength)
    }

    private var fanout: Int { 1 << Int(exponent) }

    /// Adds the frame that was just written; returns the pages to write right after it.
    mutating func add(_ header: FrameHeader) -> [[UInt8]] {
        position += UInt64(Format.frameHeaderSize) + UInt64(header.storedLength)
        let row = TablePage.FrameRow(storedLength: header.storedLength, decodedLength: header.decodedLength, startsItem: header.startsItem)
        var pages: [[UInt8]] = []
        if levels.isEmpty { levels.append(OpenPage(page: TablePage(level: 0, firstOffset: header.entryOffset))) }
        if levels[0].page.frames.isEmpty { levels[0].page.firstOffset = header.entryOffset }
        levels[0].page.frames.append(row)
        if levels[0].page.frames.count == fanout { flush(0, into: &pages) }
        return pages
    }

    /// The pages that close the table once the last frame is added.
    mutating func finish() -> [[UInt8]] {
        var pages: [[UInt8]] = []
        var level = 0
        while level < levels.count {
            let open = levels[level]
            let rows = open.page.rowCount
            if level > 0, open.pagesWritten == 0, rows == 1 { break }   // its one child is the root
            if rows > 0 { flush(level, into: &pages) }
            level += 1
        }
        return pages
    }

    private mutating func flush(_ level: Int, into pages: inout [[UInt8]]) {
        let bytes = levels[level].page.encoded()
        let row = TablePage.ChildRow(position: position, firstOffset: levels[level].page.firstOffset)
        pages.append(bytes)
        position += UInt64(bytes.count)
        levels[level].pagesWritten += 1
        levels[level].page.frames.removeAll(keepingCapacity: true)
        levels[level].page.children.removeAll(keepingCapacity: true)
        if levels.count == level + 1 { levels.append(OpenPage(page: TablePage(level: level + 1, firstOffset: row.firstOffset))) }
        if levels[level + 1].page.children.isEmpty { levels[level + 1].page.firstOffset = row.firstOffset }
        levels[level + 1].page.children.append(row)
        if levels[level + 1].page.children.count == fanout { flush(level + 1, into: &pages) }
    }
}
