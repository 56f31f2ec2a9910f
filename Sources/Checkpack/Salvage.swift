/// What `salvage` recovered.
public struct SalvageReport: Sendable {
    /// How much of an entry was recovered.
    public enum Outcome: Sendable, Equatable {
        /// Every byte, with the entry's end record and content CRC32C checked.
        case complete
        /// Only the first `bytes` bytes survived (the rest was damaged or cut off).
        case partial(reason: String)
        /// Not written: its name was unsafe or already taken.
        case skipped(reason: String)
    }

    /// One entry salvage found.
    public struct Entry: Sendable {
        /// The entry's name.
        public var name: String
        /// A file or a directory.
        public var kind: EntryKind
        /// Content bytes recovered.
        public var bytes: UInt64
        /// How much of it was recovered.
        public var outcome: Outcome
    }

    /// Every entry found, in archive order.
    public var entries: [Entry] = []
    /// Archive ranges that could not be read as records and were skipped.
    public var damagedRanges: [Range<UInt64>] = []
    /// True when the scan reached the index (so no entry after the damage was lost with the tail).
    public var reachedIndex = false
    /// Bytes after the archive's trailer, not read (another archive appended to this one?).
    public var ignoredTail: Range<UInt64>? = nil

    /// True when the whole archive was recovered: no damage, nothing skipped, nothing after it.
    public var isComplete: Bool {
        damagedRanges.isEmpty && reachedIndex && ignoredTail == nil && entries.allSatisfy { $0.outcome == .complete }
    }
}

/// Recovers what can be recovered from a damaged archive — one whose tail or
/// index is lost, or with damage in the middle — from the in-band records alone.
public enum Salvager {
    /// Writes every intact entry, and the intact prefix of each damaged file
    /// (reported as partial), into `destination` (built beside it and renamed
    /// into place, as `unpack` does).
    public static func salvage(archive: String, to destination: String, overwrite: Bool = false) throws -> SalvageReport {
        try salvage(FileSource(path: archive), to: destination, overwrite: overwrite)
    }

    /// Salvages from any source, a local file or a remote object, opened only
    /// once the destination is known to be free.
    public static func salvage(_ open: @autoclosure () throws -> any ArchiveSource, to destination: String,
                               overwrite: Bool = false) throws -> SalvageReport {
        try Unpacker.refuseExisting(destination, overwrite: overwrite)
        let source = try open()
        let staging = try FileSystem.temporaryDirectory(beside: destination, suffix: "ckpk-unpack")
        Interruption.track(staging)
        defer { Interruption.untrack(staging) }
        do {
            let tree = try Unpacker.TreeBuilder(root: staging, progress: { _ in })
            var scan = Scan(source: source, tree: tree)
            try scan.run()
            try tree.finish()
            try Unpacker.replace(destination, with: staging, overwrite: overwrite)
            return scan.report
        } catch {
            FileSystem.removeTree(staging)
            throw error
        }
    }

    private struct Scan {
        let source: any ArchiveSource
        let tree: Unpacker.TreeBuilder
        var report = SalvageReport()
        var names = TreeCheck()
        var position: UInt64 = 0

        init(source: any ArchiveSource, tree: Unpacker.TreeBuilder) {
            self.source = source
            self.tree = tree
        }

        func bytes(_ count: Int, at offset: UInt64) -> [UInt8]? {
            guard offset <= source.size, UInt64(count) <= source.size - offset else { return nil }
            return try? source.read(count: count, at: offset)
        }

        /// Archive features from the file header; a header that names a
        /// version or feature this reader does not know is refused, a damaged
        /// one is skipped like any other damage.
        var features = Format.knownRequiredFeatures

        mutating func run() throws {
            do {
                features = try FileHeader.decode((bytes(Format.headerSize, at: 0) ?? [])[...]).requiredFeatures
                position = UInt64(Format.headerSize)
            } catch let error as CheckpackError where error.kind == .unsupported {
                throw error.at(path: source.name)
            } catch {
                position = 0
            }
            while let tag = bytes(4, at: position) {
                if tag == Format.indexTag, (try? ArchiveIndex.decodeHeader((bytes(Format.indexHeaderSize, at: position) ?? [])[...])) != nil {
                    report.reachedIndex = true
                    // The records end here; what follows the trailer (if it is intact) is not this archive's.
                    if let end = archiveEnd(indexAt: position), end < source.size { report.ignoredTail = end..<source.size }
                    return
                }
                if tag == Format.entryTag, let (record, length) = entryRecord(at: position) {
                    position += UInt64(length)
                    try entry(record, recordLength: length)
                } else {
                    resynchronize()
                }
            }
        }

        /// Where the archive whose index starts at `offset` ends: after its
        /// trailer, when the rows and the trailer that follows them hold together.
        func archiveEnd(indexAt offset: UInt64) -> UInt64? {
            let input = SequentialInput(source: RangeSource(source: source, range: offset..<source.size))
            guard let head = try? input.read(Format.indexHeaderSize), let count = try? ArchiveIndex.decodeHeader(head[...]) else { return nil }
            var length = UInt64(Format.indexHeaderSize)
            for _ in 0..<count {
                guard let row = try? input.read(Format.indexRowFixedSize) else { return nil }
                let at = IndexRow.nameLengthOffset
                let nameLength = Int(row[at]) | Int(row[at + 1]) << 8
                guard (try? input.read(nameLength)) != nil else { return nil }
                length += UInt64(Format.indexRowFixedSize + nameLength)
            }
            let trailerAt = offset + length
            guard let trailerBytes = try? input.read(Format.trailerSize),
                  let trailer = try? Trailer.decode(trailerBytes[...], base: trailerAt),
                  trailer.indexOffset == offset, trailer.indexLength == length else { return nil }
            return trailerAt + UInt64(Format.trailerSize)
        }

        func entryRecord(at offset: UInt64) -> (EntryRecord, Int)? {
            guard let head = bytes(16, at: offset), let length = try? EntryRecord.length(head: head[...]),
                  let all = bytes(length, at: offset), let record = try? EntryRecord.decode(all[...]) else { return nil }
            return (record, length)
        }

        /// Skips to the next entry record whose checksum holds.
        mutating func resynchronize() {
            let start = position
            position += 1
            let window = 1 << 20
            while position < source.size {
                guard let chunk = bytes(Int(min(UInt64(window), source.size - position)), at: position) else { break }
                var found: UInt64? = nil
                var i = 0
                while i + 4 <= chunk.count {
                    if chunk[i] == Format.entryTag[0] && Array(chunk[i..<i + 4]) == Format.entryTag,
                       entryRecord(at: position + UInt64(i)) != nil {
                        found = position + UInt64(i)
                        break
                    }
                    i += 1
                }
                if let found {
                    position = found
                    break
                }
                position += UInt64(max(1, chunk.count - 3))
            }
            position = min(position, source.size)
            report.damagedRanges.append(start..<position)
        }

        mutating func entry(_ record: EntryRecord, recordLength: Int) throws {
            do {
                try names.add(record.name, kind: record.kind)
            } catch let error as CheckpackError {
                report.entries.append(.init(name: record.name, kind: record.kind, bytes: 0, outcome: .skipped(reason: error.message)))
                return
            }
            try tree.start(record)
            var written: UInt64 = 0
            // The same rules as every reader: frames in order, the table pages they call for, the end record.
            var validator = EntryValidator(record: record, recordLength: recordLength, features: features)
            func finish(_ outcome: SalvageReport.Outcome) throws {
                try tree.end()
                report.entries.append(.init(name: record.name, kind: record.kind, bytes: written, outcome: outcome))
            }
            while true {
                if let page = validator.nextExpectedPage {
                    guard let found = bytes(page.count, at: position), (try? validator.acceptPage(found[...])) != nil else {
                        try finish(.partial(reason: "frame table page at archive offset \(position) is damaged or missing"))
                        return resynchronize()
                    }
                    position += UInt64(page.count)
                    continue
                }
                guard let tag = bytes(4, at: position) else { return try finish(.partial(reason: "the archive ends inside the entry")) }
                if tag == Format.frameTag, record.kind == .file, !validator.framesFinished {
                    let frames = validator.frameCount
                    let header = bytes(Format.frameHeaderSize, at: position).flatMap { try? FrameHeader.decode($0[...]) }
                    if let header, position + UInt64(Format.frameHeaderSize) + UInt64(header.storedLength) > source.size {
                        return try finish(.partial(reason: "the archive ends inside frame \(frames)"))
                    }
                    guard let header, (try? validator.accept(header)) != nil,
                          let stored = bytes(Int(header.storedLength), at: position + UInt64(Format.frameHeaderSize)),
                          let decoded = try? StreamFrame(header: header, stored: stored).decode() else {
                        try finish(.partial(reason: "frame \(frames) at archive offset \(position) is damaged"))
                        return resynchronize()
                    }
                    try tree.append(decoded)
                    written += UInt64(decoded.count)
                    position += UInt64(Format.frameHeaderSize) + UInt64(header.storedLength)
                } else if (tag == Format.pageTag || tag == Format.entryEndTag), !validator.framesFinished {
                    try? validator.finishFrames()
                } else if tag == Format.entryEndTag, let all = bytes(Format.entryEndSize, at: position), let end = try? EntryEnd.decode(all[...]) {
                    position += UInt64(Format.entryEndSize)
                    let intact = (try? validator.close(end)) != nil
                    return try finish(intact ? .complete : .partial(reason: "the entry end record disagrees with its frames"))
                } else {
                    try finish(.partial(reason: "the entry is cut off at archive offset \(position)"))
                    return resynchronize()
                }
            }
        }
    }
}
