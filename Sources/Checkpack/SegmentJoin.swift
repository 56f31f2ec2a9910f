/// Joins segments — runs of entry records written apart, by different
/// processes (`ArchiveWriter.finishSegment()`) — into one archive: the index
/// and trailer that close it, and the file header that opens it. Records
/// hold no archive offsets (spec section 11.3), so a segment's bytes go into
/// the archive unchanged; only its index rows are rebased.
package enum SegmentJoin {
    /// `segments` in archive order; the first starts with the file header.
    /// Returns the header to put over the first 16 bytes (its features are
    /// every segment's), and the bytes that end the archive: the index,
    /// checked as any reader checks it, and the trailer.
    package static func close(_ segments: [ArchiveWriter.Segment]) throws -> (header: [UInt8], end: [UInt8]) {
        var index = IndexBuilder()
        var base: UInt64 = 0, features: UInt32 = 0
        for segment in segments {
            let count = try ArchiveIndex.decodeHeader(segment.index[...])
            var reader = ByteReader(segment.index[Format.indexHeaderSize...])
            for _ in 0..<count {
                var row = try IndexRow.decode(&reader)
                row.recordOffset = try row.recordOffset.adding(base, "a rebased record offset")
                row.endOffset = try row.endOffset.adding(base, "a rebased end offset")
                index.add(row)
            }
            guard reader.remaining == 0 else { throw CheckpackError(.corrupt, "a segment's index has bytes after its rows") }
            base = try base.adding(segment.length, "the archive's length")
            features |= segment.requiredFeatures
        }
        guard features & ~Format.knownRequiredFeatures == 0 else {
            throw CheckpackError(.unsupported, "a segment uses required features 0x\(String(features, radix: 16)) this writer does not know")
        }
        guard index.encodedLength <= Format.maxIndexLength, index.entryCount <= Format.maxEntries else {
            throw CheckpackError(.limitExceeded, "the index would exceed \(Format.maxIndexLength) bytes or \(Format.maxEntries) entries")
        }
        let indexBytes = index.encoded()
        _ = try ArchiveIndex.parse(indexBytes, indexOffset: base, features: features)   // tiling, names: the whole index
        let trailer = Trailer(indexOffset: base, indexLength: UInt64(indexBytes.count), indexCRC: CRC32C.checksum(indexBytes),
                              requiredFeatures: features).encoded()
        return (FileHeader(requiredFeatures: features).encoded(), indexBytes + trailer)
    }
}

extension SegmentJoin {
    /// Starts a rank's segment record (what crosses processes to the
    /// coordinator): `magic`, then the segment's length, features and index;
    /// the caller appends what its kind of share adds.
    package static func beginRecord(_ magic: [UInt8], _ segment: ArchiveWriter.Segment, extra: Int = 0) -> ByteWriter {
        var out = ByteWriter(capacity: magic.count + 20 + segment.index.count + extra)
        out.raw(magic)
        out.u64(segment.length)
        out.u32(segment.requiredFeatures)
        out.u64(UInt64(segment.index.count))
        out.raw(segment.index)
        return out
    }

    /// Reads a record `beginRecord` started: checks `magic`, reads the segment,
    /// and hands the rest to `body`, which must read all of it. A record cut
    /// short, or with bytes after its end, is `corrupt`.
    package static func readRecord<T>(_ bytes: [UInt8], _ magic: [UInt8],
                                      _ body: (ArchiveWriter.Segment, inout ByteReader) throws -> T) throws -> T {
        do {
            var reader = ByteReader(bytes)
            guard Array(try reader.take(magic.count)) == magic else { throw CheckpackError(.corrupt, "not a rank's segment record") }
            let length = try reader.u64(), features = try reader.u32()
            let index = Array(try reader.take(Int(checked: try reader.u64(), "a segment's index length")))
            let value = try body(ArchiveWriter.Segment(length: length, index: index, requiredFeatures: features), &reader)
            guard reader.remaining == 0 else { throw CheckpackError(.corrupt, "a rank's segment record has bytes after its end") }
            return value
        } catch let error as CheckpackError where error.kind == .truncated || error.kind == .limitExceeded {
            throw CheckpackError(.corrupt, "a rank's segment record is cut short")
        }
    }

    /// Entries (name, bytes) written in memory as a segment: the files the
    /// coordinator adds last (`.metadata`), or a padding entry.
    package static func entries(_ files: [(name: String, bytes: [UInt8])], options: WriterOptions) throws
        -> (bytes: [UInt8], segment: ArchiveWriter.Segment) {
        let sink = MemorySink(name: "the coordinator's entries")
        let writer = try ArchiveWriter(sink: sink, options: options, startsArchive: false)
        for file in files { try writer.addFile(file.name, contents: file.bytes) }
        let segment = try writer.finishSegment()
        return (sink.bytes, segment)
    }

    /// A stored entry of zeros named `name` whose record, placed at
    /// `offset`, ends at the first multiple of `alignment` that leaves room
    /// for at least one byte of content: the filler of a gap between
    /// segments. Its content stays within one frame (`alignment` up to 1 MiB).
    package static func padding(_ name: String, at offset: UInt64, alignment: UInt64) throws -> (bytes: [UInt8], segment: ArchiveWriter.Segment) {
        let overhead = try entries([(name, [0])], options: WriterOptions(codec: .stored)).bytes.count - 1
        let end = (offset + UInt64(overhead) + alignment) / alignment * alignment
        let padding = try entries([(name, [UInt8](repeating: 0, count: Int(end - offset) - overhead))], options: WriterOptions(codec: .stored))
        guard UInt64(padding.bytes.count) == end - offset else {
            throw CheckpackError(.invalidArgument, "a padding entry came out \(padding.bytes.count) bytes long, not \(end - offset)")
        }
        return padding
    }
}

/// An archive sink that keeps the bytes in memory (for a small segment).
package final class MemorySink: ArchiveSink {
    package private(set) var bytes: [UInt8] = []
    package let name: String
    package init(name: String) { self.name = name }
    package func write(_ bytes: UnsafeRawBufferPointer) throws { self.bytes.append(contentsOf: bytes) }
    package func commit(header: [UInt8]) throws {
        bytes.replaceSubrange(0..<min(header.count, bytes.count), with: header.prefix(bytes.count))
    }
    package func abort() { bytes = [] }
}
