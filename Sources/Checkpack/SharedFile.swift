#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One local archive saved by several processes (spec/CHECKPOINT.md, "Saving
/// from many ranks into one file"), with no staging copies: the coordinator
/// makes a temporary file beside the destination (`create`); each rank writes
/// its segment straight into its own region of that file (`FileRegionSink`);
/// the coordinator closes the gaps between the segments and finishes the
/// archive (`complete`). Regions are far apart and stay sparse until written,
/// so no byte is written twice where the filesystem can collapse a range
/// (ext4, XFS); elsewhere each segment is moved down once.
public enum SharedFile {
    /// Creates the temporary file beside `path` that the ranks fill; returns its path.
    /// Refuses an existing destination unless `overwrite`.
    public static func create(beside path: String, overwrite: Bool) throws -> String {
        try FileSink.temporaryFile(for: path, overwrite: overwrite).path
    }

    /// Removes the temporary file (from any rank), so that nothing is left of a failed save.
    public static func abort(_ temporary: String) {
        _ = unlink(temporary)
        Interruption.untrack(temporary)
    }

    /// The region of the temporary file for part numbers `parts` of `partSize`
    /// bytes (the plan of a shared upload): part k is bytes (k−1)·partSize ..< k·partSize.
    public static func region(parts: ClosedRange<Int>, partSize: Int) throws -> Range<UInt64> {
        guard parts.lowerBound >= 1, partSize > 0 else {
            throw CheckpackError(.invalidArgument, "part numbers \(parts) of \(partSize) bytes")
        }
        let size = UInt64(partSize)
        let (start, low) = UInt64(parts.lowerBound - 1).multipliedReportingOverflow(by: size)
        let (end, high) = UInt64(parts.upperBound).multipliedReportingOverflow(by: size)
        guard !low, !high, end <= UInt64(Int64.max) else {
            throw CheckpackError(.limitExceeded, "part numbers \(parts) of \(partSize) bytes pass the largest file offset")
        }
        return start..<end
    }

    /// Room kept free at the end of each region for the padding entry that
    /// closes the gap after it (at most a block, up to 1 MiB, and the record's own bytes).
    static let reserve: UInt64 = (1 << 20) + (64 << 10)
    /// Names of the padding entries, numbered by the gap they fill.
    public static let paddingPrefix = ".checkpack-padding-"

    /// What one rank's segment left for the coordinator: where its region
    /// starts and how to place it. Crosses processes as `encoded()` bytes,
    /// checked by `init(decoding:)`.
    public struct Segment: Sendable {
        var offset: UInt64
        var segment: ArchiveWriter.Segment

        static let magic = Array("CKFSEG2\n".utf8)   // 2: the offset follows the segment

        init(offset: UInt64, segment: ArchiveWriter.Segment) { (self.offset, self.segment) = (offset, segment) }

        /// The record as bytes.
        public func encoded() -> [UInt8] {
            var out = SegmentJoin.beginRecord(Segment.magic, segment, extra: 8)
            out.u64(offset)
            return out.bytes
        }

        /// Decodes `encoded()` bytes, checking every length against what is there.
        public init(decoding bytes: [UInt8]) throws {
            self = try SegmentJoin.readRecord(bytes, Segment.magic) { segment, reader in
                Segment(offset: try reader.u64(), segment: segment)
            }
        }
    }

    /// The coordinator's last step: `segments` in archive order (the first is
    /// the coordinator's, at offset 0, with the file header), then `files`
    /// (name, bytes) written here, become the archive at `path`. Each gap
    /// between two segments becomes a padding entry up to the next block
    /// boundary, and the rest of it is collapsed out of the file (or, where
    /// the filesystem cannot, the next segment is moved down). Then the
    /// index and trailer, the header, fsync and rename, as `FileSink` commits.
    /// On failure the temporary file is removed.
    public static func complete(temporary: String, path: String, overwrite: Bool, segments: [Segment],
                                files: [(name: String, bytes: [UInt8])], options: WriterOptions) throws {
        let sink: FileSink
        do {
            sink = try FileSink(adopting: temporary, path: path, overwrite: overwrite)
        } catch {
            abort(temporary)
            throw error
        }
        do {
            guard let file = sink.file else { throw CheckpackError(.invalidArgument, "archive is closed", path: path) }
            guard let coordinator = segments.first, coordinator.offset == 0 else {
                throw CheckpackError(.invalidArgument, "the first segment must be the coordinator's, at the start of the file")
            }
            let block = try alignment(of: file)
            var placed = [coordinator.segment]
            var end = coordinator.segment.length   // where the archive's bytes end so far
            var removed: UInt64 = 0                // bytes collapsed out before the segments still to place
            var collapses = true
            for (gap, segment) in segments.dropFirst().enumerated() {
                let length = segment.segment.length
                guard length > 0 else { placed.append(segment.segment); continue }
                guard segment.offset >= removed, segment.offset - removed >= end else {
                    throw CheckpackError(.corrupt, "rank segments overlap: one starts at \(segment.offset), before the end of the last")
                }
                var start = segment.offset - removed
                guard try start.adding(length, "a segment's end") <= file.size else {
                    throw CheckpackError(.corrupt, "a rank's segment ends after the end of the file")
                }
                if start > end {
                    let padding = try SegmentJoin.padding(paddingPrefix + String(gap + 1), at: end, alignment: block)
                    if end + UInt64(padding.bytes.count) <= start {
                        try padding.bytes.withUnsafeBytes { try file.write($0, at: end) }
                        placed.append(padding.segment)
                        end += UInt64(padding.bytes.count)
                        if start > end && collapses {
                            collapses = file.collapse(start - end, at: end)
                            if collapses { (removed, start) = (removed + start - end, end) }
                        }
                    }
                    if start > end { try move(file, count: length, from: start, to: end) }
                }
                placed.append(segment.segment)
                end += length
            }
            let written = try SegmentJoin.entries(files, options: options)
            placed.append(written.segment)
            let (header, tail) = try SegmentJoin.close(placed)
            let last = written.bytes + tail
            try last.withUnsafeBytes { try file.write($0, at: end) }
            try file.truncate(to: end + UInt64(last.count))
            try sink.commit(header: header)
        } catch {
            sink.abort()
            throw error.checkpackContext(path: path)
        }
    }

    /// The block size collapses align to: the filesystem's, when it is a power of two up to 1 MiB.
    private static func alignment(of file: SystemFile) throws -> UInt64 {
        let size = try file.blockSize
        return size >= 512 && size <= 1 << 20 && size & (size - 1) == 0 ? size : 4096
    }

    /// Copies `count` bytes at `from` down to `to` (`to` < `from`; front to back, so an overlap is safe).
    private static func move(_ file: SystemFile, count: UInt64, from: UInt64, to: UInt64) throws {
        let chunk = 8 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buffer.deallocate() }
        var done: UInt64 = 0
        while done < count {
            let n = Int(min(UInt64(chunk), count - done))
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
            try file.read(into: part, at: from + done)
            try file.write(UnsafeRawBufferPointer(part), at: to + done)
            done += UInt64(n)
        }
    }
}

/// A rank's share of an archive that several processes write (a local file's
/// region, an S3 upload's parts): its segment's bytes go in as they are written.
package protocol SegmentSink: ArchiveSink {
    /// Ends the share; returns the record the coordinator completes the archive with.
    func record(_ segment: ArchiveWriter.Segment) throws -> [UInt8]
}

/// One rank's share of a `SharedFile`: its segment is written straight into
/// its region of the temporary file, which must hold it (with
/// `SharedFile.reserve` to spare). On failure or abort the temporary file is
/// removed, so the save fails on every rank.
public final class FileRegionSink: SegmentSink, GatheringSink {
    /// The temporary file, for messages.
    public var name: String { writing?.file.path ?? "a closed region" }
    /// The temporary file, synced as it grows; open until finished or aborted.
    private var writing: Writeback?
    private let region: Range<UInt64>
    private let limit: UInt64
    private var written: UInt64 = 0
    private let tracked: Bool

    /// Opens `temporary` (made by `SharedFile.create`) to write at `region`.
    public init(temporary: String, region: Range<UInt64>) throws {
        let size = region.upperBound - region.lowerBound
        guard size > SharedFile.reserve, region.upperBound <= UInt64(Int64.max) else {
            throw CheckpackError(.invalidArgument, "a region of \(size) bytes at \(region.lowerBound) cannot hold a segment", path: temporary)
        }
        let file = try SystemFile.openForWriting(temporary)
        tracked = Interruption.track(file.path)   // not already: the coordinator's own `create` tracks it
        writing = Writeback(file)
        self.region = region
        limit = size - SharedFile.reserve
    }

    deinit { abort() }

    /// Writes `bytes` after the previous ones, within the region.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try write(gathering: [bytes])
    }

    package func write(gathering parts: [UnsafeRawBufferPointer]) throws {
        guard let writing else { throw CheckpackError(.invalidArgument, "segment is closed") }
        let count = parts.reduce(0) { $0 + $1.count }
        guard UInt64(count) <= limit - written else {
            throw CheckpackError(.limitExceeded, "this rank's records need more than the \(limit) bytes planned for it", path: writing.file.path)
        }
        try writing.file.write(gathering: parts, at: region.lowerBound + written)
        written += UInt64(count)
        writing.wrote(count)
    }

    /// Syncs the region (a rank on another host must leave its bytes on the
    /// shared filesystem) and returns what the coordinator needs.
    package func finish(_ segment: ArchiveWriter.Segment) throws -> SharedFile.Segment {
        guard let writing else { throw CheckpackError(.invalidArgument, "segment is closed") }
        guard segment.length == written else {
            throw CheckpackError(.invalidArgument, "the segment is \(segment.length) bytes, the region got \(written)", path: writing.file.path)
        }
        do {
            try writing.sync()
        } catch {
            abort()
            throw error
        }
        if tracked { Interruption.untrack(writing.file.path) }   // the coordinator owns the file now
        self.writing = nil
        return SharedFile.Segment(offset: region.lowerBound, segment: segment)
    }

    package func record(_ segment: ArchiveWriter.Segment) throws -> [UInt8] { try finish(segment).encoded() }

    /// A segment is finished with `finish(_:)`, not committed.
    public func commit(header: [UInt8]) throws {
        throw CheckpackError(.invalidArgument, "a rank's segment is finished by SharedFile, not committed", path: name)
    }

    /// Removes the temporary file: the save fails on every rank.
    public func abort() {
        guard let writing else { return }
        SharedFile.abort(writing.file.path)
        self.writing = nil
    }
}
