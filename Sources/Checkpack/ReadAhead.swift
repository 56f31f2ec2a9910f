/// A source that can start fetching bytes a read will want soon (a local
/// file: into the page cache), so that they arrive while earlier ones decode.
package protocol ReadAheadSource: ArchiveSource {
    /// Starts fetching `range` without waiting for it; a hint that cannot fail.
    func willRead(_ range: Range<UInt64>)
}

extension FileSource: ReadAheadSource {
    package func willRead(_ range: Range<UInt64>) {
        file.adviseWillRead(range)
    }
}

/// Tells a source where a batch read jumps to next, a few jumps ahead of the
/// reads in progress, so that a cold local archive is read from the disk at
/// many places at once. The kernel's read-ahead follows a contiguous stretch
/// once it is being read, but each jump (to the ends of 300 tensors, say)
/// would otherwise wait for the disk in turn: 0.2 s of a 1.3 s cold load
/// of 1 GB, 0.05 s with this.
final class ReadAhead: Sendable {
    let source: any ReadAheadSource
    /// The first bytes (at most `advised`) of each stretch of runs that lie close together.
    let stretches: [Range<UInt64>]
    /// For each run: the stretch it starts, if it starts one.
    let startsStretch: [Int?]
    /// The first stretch not yet asked for.
    private let next = Locked(0)
    /// Stretches asked for ahead of the one being read.
    static let ahead = 16
    /// Bytes asked for at the start of each stretch.
    static let advised: UInt64 = 1 << 20
    /// A run that starts within this many bytes of the previous ones' end continues their stretch.
    static let gap: UInt64 = 64 << 10

    /// `spans`: the archive bytes of each run, in archive order.
    init(source: any ReadAheadSource, spans: [Range<UInt64>]) {
        self.source = source
        let groups = closeGroups(spans, gap: Self.gap, maxLength: .max)
        stretches = groups.spans.map { $0.lowerBound..<min($0.upperBound, $0.lowerBound + Self.advised) }
        var startsStretch = [Int?](repeating: nil, count: spans.count)
        for (stretch, runs) in groups.members.enumerated() { startsStretch[runs.lowerBound] = stretch }
        self.startsStretch = startsStretch
    }

    /// Run `run` is about to be read: asks for its stretch (when it starts
    /// one) and the `ahead` after it, each once.
    func reached(_ run: Int) {
        guard let stretch = startsStretch[run] else { return }
        let due = next.withLock { next -> Range<Int> in
            let start = max(next, stretch)
            next = max(start, min(stretches.count, stretch + 1 + Self.ahead))
            return start..<next
        }
        for i in due { source.willRead(stretches[i]) }
    }
}
