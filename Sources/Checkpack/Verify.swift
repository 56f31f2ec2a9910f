extension ArchiveReader {
    /// Checks every byte of the archive: each entry's in-band records against
    /// the index, every frame's header and both checksums, and each entry's
    /// content CRC32C. Returns one error per problem found (an empty array for
    /// a sound archive); throws only when the archive cannot be read at all.
    /// The trailer, index and file header were checked when the reader opened.
    public func verify(progress: ((UInt64) -> Void)? = nil) throws -> [CheckpackError] {
        var problems: [CheckpackError] = []
        var done: UInt64 = 0
        for entry in entries {
            func problem(_ error: Error, frame: Int? = nil, offset: UInt64) throws {
                guard var error = error as? CheckpackError else { throw error }
                if case .io = error.kind { throw error.checkpackContext(path: source.name) }
                if error.kind == .truncated, error.path != nil { error.path = nil }
                problems.append(error.at(path: source.name, entry: entry.name, frame: frame, offset: offset))
            }
            do {
                try checkRecord(entry.record.encoded(), at: entry.recordOffset, what: "entry record")
            } catch {
                try problem(error, offset: entry.recordOffset)
            }
            var crc: UInt32 = 0
            var intact = true
            for number in entry.frames {
                let frame = index.frames[number]
                do {
                    let bytes = try decodeFrame(frame)
                    crc = CRC32C.checksum(bytes, continuing: crc)
                } catch {
                    intact = false
                    try problem(error, frame: number - entry.frames.lowerBound, offset: frame.archiveOffset)
                }
                done += UInt64(frame.header.decodedLength)
                progress?(done)
            }
            if intact, crc != entry.contentCRC {
                problems.append(CheckpackError(.checksumMismatch, "entry content CRC32C mismatch", path: source.name,
                                               entry: entry.name, offset: entry.endOffset))
            }
            do {
                try checkRecord(entry.end.encoded(), at: entry.endOffset, what: "entry end record")
            } catch {
                try problem(error, offset: entry.endOffset)
            }
        }
        return problems
    }

    private func checkRecord(_ expected: [UInt8], at offset: UInt64, what: String) throws {
        let found = try source.read(count: expected.count, at: offset)
        guard found == expected else { throw CheckpackError(.corrupt, "\(what) differs from its copy in the index") }
    }
}
