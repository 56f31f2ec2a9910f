extension ArchiveReader {
    /// Checks every byte of the archive: each entry's records front to back
    /// under the same rules as the stream reader (frame order, frame table
    /// pages, entry end record) and against the index, and every frame's
    /// header and both checksums. Returns one error per problem found (an
    /// empty array for a sound archive); throws only when the archive cannot be
    /// read at all. The trailer, index and file header were checked when the
    /// reader opened.
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
            var number = 0
            do {
                try forEachFrame(of: entry, stored: true) { location, frame in
                    defer { number += 1 }
                    do {
                        guard let frame else { return }
                        _ = try frame.decode()
                        decodedFrame()
                    } catch {
                        try problem(error, frame: number, offset: location.archiveOffset)
                    }
                    done += UInt64(location.header.decodedLength)
                    progress?(done)
                }
            } catch {
                try problem(error, offset: entry.recordOffset)
            }
        }
        return problems
    }
}
