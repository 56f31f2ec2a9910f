import Checkpack

/// One archive saved by several processes into one S3 object, as one
/// multipart upload (spec/CHECKPOINT.md, "Saving from many ranks into one
/// object"). The coordinator creates the upload; each rank writes its
/// entries as a *segment* into its own range of part numbers
/// (`S3SegmentSink`) and hands back a `SharedUpload.Segment`; the coordinator
/// sends what remains — the first part with the file header, small
/// segments, its own entries, the index and the trailer — and completes it.
public enum SharedUpload {
    /// The last part number: the coordinator's final part, after every rank's range.
    public static let finalPart = S3MultipartSink.maximumParts

    /// The part size and each rank's part numbers for ranks that plan to
    /// write `plannedBytes` each: parts of `partSize` (default 16 MiB, doubled
    /// until the ranges fit S3's 10,000 parts, up to 2 GiB), room for each
    /// rank's bytes × 1.1 + 64 MiB (torch.save's records, objects that are not
    /// tensors), the coordinator's range from 1, the others after it in rank
    /// order, and 10000 left for the coordinator's final part.
    public static func plan(plannedBytes: [UInt64], coordinator: Int, partSize: Int? = nil) throws
        -> (partSize: Int, ranges: [ClosedRange<Int>]) {
        guard plannedBytes.indices.contains(coordinator) else {
            throw CheckpackError(.invalidArgument, "coordinator \(coordinator) is not one of \(plannedBytes.count) ranks")
        }
        let budgets = plannedBytes.map { $0 / 10 * 11 + (64 << 20) }
        var size = UInt64(partSize ?? 16 << 20)
        var counts: [Int]
        while true {
            counts = budgets.map { Int(clamping: ($0 + size - 1) / size + 1) }
            if counts.reduce(0, { $0 &+ $1 }) < finalPart || partSize != nil || size >= 2 << 30 { break }
            size *= 2
        }
        guard counts.reduce(0, { $0 &+ $1 }) < finalPart else {
            throw CheckpackError(.limitExceeded, "the checkpoint needs more than S3's \(finalPart) parts of \(size) bytes: choose a larger part size")
        }
        var ranges = Array(repeating: 1...1, count: budgets.count)
        var start = 1
        for rank in [coordinator] + budgets.indices.filter({ $0 != coordinator }) {
            ranges[rank] = start...(start + counts[rank] - 1)
            start += counts[rank]
        }
        return (Int(size), ranges)
    }

    /// Creates the upload; returns its id.
    public static func create(_ object: S3Object) throws -> String {
        let upload = S3Upload(object: object)
        let id = try upload.id()
        upload.unregister()   // each rank's sink aborts it on a signal from now on
        return id
    }

    /// Aborts the upload (from any rank), so that no part stays stored.
    public static func abort(_ object: S3Object, uploadID: String) {
        S3Upload.abort(object, uploadID)
    }

    /// What one rank's segment left for the coordinator: the parts it sent,
    /// the bytes it did not send, and how to place it. Crosses processes as
    /// `encoded()` bytes, checked by `init(decoding:)`.
    public struct Segment: Sendable {
        var parts: [S3Upload.Part]
        /// The coordinator's first part (header included), held to be sent last.
        var first: [UInt8]?
        /// Bytes that no part carries: a whole segment below S3's 5 MiB part
        /// minimum, or the tail of the coordinator's first part.
        var held: [UInt8]
        var segment: ArchiveWriter.Segment

        static let magic = Array("CKSEG2\r\n".utf8)   // 2: features are 32 bits, as in SharedFile's record

        /// The segment as bytes.
        public func encoded() -> [UInt8] {
            var out = SegmentJoin.beginRecord(Segment.magic, segment, extra: 32 + (first?.count ?? 0) + held.count)
            func blob(_ b: [UInt8]) { out.u64(UInt64(b.count)); out.raw(b) }
            out.u64(UInt64(parts.count))
            for part in parts {
                out.u64(UInt64(part.number))
                blob(Array(part.etag.utf8))
                blob(Array(part.checksum.utf8))
            }
            out.u64(first == nil ? 0 : 1)
            blob(first ?? [])
            blob(held)
            return out.bytes
        }

        /// Decodes `encoded()` bytes, checking every length against what is there.
        public init(decoding bytes: [UInt8]) throws {
            self = try SegmentJoin.readRecord(bytes, Segment.magic) { segment, reader in
                func blob() throws -> [UInt8] { Array(try reader.take(Int(checked: try reader.u64(), "a segment record's field length"))) }
                func text() throws -> String {
                    guard let text = String(validating: try blob(), as: UTF8.self) else { throw CheckpackError(.corrupt, "a part's ETag is not UTF-8") }
                    return text
                }
                let count = try reader.u64()
                guard count <= UInt64(S3MultipartSink.maximumParts) else { throw CheckpackError(.corrupt, "a segment claims \(count) parts") }
                var parts: [S3Upload.Part] = []
                for _ in 0..<count {
                    let number = try reader.u64()
                    guard (1...UInt64(S3MultipartSink.maximumParts)).contains(number) else { throw CheckpackError(.corrupt, "part number \(number)") }
                    parts.append(S3Upload.Part(number: Int(number), etag: try text(), checksum: try text()))
                }
                let hasFirst = try reader.u64()
                let firstBytes = try blob()
                return Segment(parts: parts, first: hasFirst == 1 ? firstBytes : nil, held: try blob(), segment: segment)
            }
        }

        init(parts: [S3Upload.Part], first: [UInt8]?, held: [UInt8], segment: ArchiveWriter.Segment) {
            (self.parts, self.first, self.held, self.segment) = (parts, first, held, segment)
        }
    }

    /// The coordinator's last step: `segments` in rank order (the first is the
    /// coordinator's, which holds the first part), then `files` (name, bytes)
    /// written here, are joined into the object, which appears when the upload
    /// completes. On failure the upload is aborted.
    public static func complete(_ object: S3Object, uploadID: String, segments: [Segment], files: [(name: String, bytes: [UInt8])],
                                options: WriterOptions) throws {
        let upload = S3Upload(object: object, uploadID: uploadID)
        do {
            guard let coordinator = segments.first, coordinator.first != nil || coordinator.parts.isEmpty else {
                throw CheckpackError(.invalidArgument, "the first segment must be the coordinator's, which holds the first part")
            }
            // Part 1: the coordinator's first part and what it held; then, in order, every part the ranks sent.
            var first = (coordinator.first ?? []) + coordinator.held
            let senders = segments.dropFirst().filter { !$0.parts.isEmpty }
            var small = segments.dropFirst().filter { $0.parts.isEmpty }
            var placed = [coordinator.segment]
            var tail: [UInt8] = []
            if first.count < S3MultipartSink.minimumPartSize && !senders.isEmpty {
                // Part 1 is not the last part, so it must reach S3's minimum: the small segments
                // join it, and a stored padding entry makes up the rest (spec/CHECKPOINT.md).
                for segment in small {
                    first += segment.held
                    placed.append(segment.segment)
                }
                small = []
                if first.count < S3MultipartSink.minimumPartSize {
                    let padding = try SegmentJoin.entries([(paddingName, [UInt8](repeating: 0, count: S3MultipartSink.minimumPartSize - first.count))],
                                                  options: WriterOptions(codec: .stored))
                    first += padding.bytes
                    placed.append(padding.segment)
                }
            }
            placed += senders.map(\.segment)
            for segment in small {
                tail += segment.held
                placed.append(segment.segment)
            }
            let written = try SegmentJoin.entries(files, options: options)
            tail += written.bytes
            placed.append(written.segment)
            let (header, end) = try SegmentJoin.close(placed)
            tail += end
            guard first.count >= header.count else { throw CheckpackError(.corrupt, "the coordinator's segment lacks the file header") }
            first.replaceSubrange(0..<header.count, with: header)
            var parts = segments.flatMap(\.parts)
            if senders.isEmpty && coordinator.parts.isEmpty {
                try upload.send(first + tail, number: 1)   // one part: no minimum
            } else {
                try upload.send(first, number: 1)
                try upload.send(tail, number: finalPart)
            }
            parts += try upload.waitForParts()
            try upload.complete(parts)
        } catch {
            upload.abort()
            throw error.checkpackContext(path: object.name)
        }
    }

    /// The entry that makes up part 1 to S3's minimum when the coordinator's own
    /// entries are fewer (it unpacks as an empty-content file of zeros).
    public static let paddingName = ".checkpack-padding"
}

/// One rank's share of a `SharedUpload`: its segment goes up as parts numbered
/// within `parts`, each at least `partSize` bytes (so S3's 5 MiB minimum holds
/// for all but the last part of the object): the most recent full part is
/// held back and joined with what follows it. The coordinator's sink
/// (`holdsFirst`) also keeps its first part, which gets the file header at
/// the end. A segment below S3's minimum sends nothing and is handed back
/// whole. On failure or abort, the whole upload is aborted: a failing rank
/// fails the save on every rank.
public final class S3SegmentSink: SegmentSink, @unchecked Sendable {
    /// The object the upload makes.
    public let object: S3Object
    /// `s3://bucket/key`, for messages.
    public var name: String { object.name }
    private let upload: S3Upload
    private let parts: ClosedRange<Int>
    private let partSize: Int
    private let holdsFirst: Bool
    private var first: [UInt8]? = nil
    private var last: [UInt8]? = nil
    private var cutter: PartCutter
    private var next: Int
    private var done = false

    /// A share of upload `uploadID` of `object`: part numbers `parts`, parts of `partSize` bytes.
    public init(object: S3Object, uploadID: String, parts: ClosedRange<Int>, partSize: Int, holdsFirst: Bool) throws {
        guard (S3MultipartSink.minimumPartSize...S3MultipartSink.maximumPartSize / 2).contains(partSize) else {
            throw CheckpackError(.invalidArgument, "part size \(partSize) is outside 5 MiB ... 2.5 GiB (two parts may join)")
        }
        guard parts.lowerBound >= 1, parts.upperBound < SharedUpload.finalPart, !holdsFirst || parts.lowerBound == 1 else {
            throw CheckpackError(.invalidArgument, "part numbers \(parts) are outside 1...\(SharedUpload.finalPart - 1), "
                                 + "or the coordinator's do not start at 1")
        }
        self.object = object
        self.parts = parts
        self.partSize = partSize
        self.holdsFirst = holdsFirst
        next = holdsFirst ? parts.lowerBound + 1 : parts.lowerBound   // the coordinator's first part is part 1
        upload = S3Upload(object: object, uploadID: uploadID)
        cutter = PartCutter(size: partSize)
    }

    deinit { abort() }

    /// Appends `bytes`; a part is sent when the one after it fills.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try upload.checkFailure()
        try cutter.append(bytes) { part in
            if holdsFirst && first == nil {
                first = part
            } else {
                if let last { try send(last) }
                last = part
            }
        }
    }

    /// Sends what can go now and returns what the coordinator needs.
    package func finish(_ segment: ArchiveWriter.Segment) throws -> SharedUpload.Segment {
        do {
            var held = (last ?? []) + cutter.takeRest()
            if last != nil || (!holdsFirst && held.count >= S3MultipartSink.minimumPartSize) {
                try send(held)
                held = []
            }
            last = nil
            let sent = try upload.waitForParts()
            done = true
            upload.unregister()   // the coordinator owns the upload now
            return SharedUpload.Segment(parts: sent, first: first, held: held, segment: segment)
        } catch {
            abort()
            throw error.checkpackContext(path: name)
        }
    }

    package func record(_ segment: ArchiveWriter.Segment) throws -> [UInt8] { try finish(segment).encoded() }

    /// A segment is finished with `finish(_:)`, not committed.
    public func commit(header: [UInt8]) throws {
        throw CheckpackError(.invalidArgument, "a rank's segment is finished by SharedUpload, not committed", path: name)
    }

    /// Aborts the whole upload: the save fails on every rank.
    public func abort() {
        guard !done else { return }
        done = true
        upload.abort()
    }

    private func send(_ part: [UInt8]) throws {
        guard next <= parts.upperBound else {
            throw CheckpackError(.limitExceeded, "this rank's records need more than the \(parts.count) parts of \(partSize) bytes planned for it")
        }
        try upload.send(part, number: next)
        next += 1
    }
}
