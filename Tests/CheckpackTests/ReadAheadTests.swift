import CheckpackTestSupport
@testable import Checkpack
import Testing

/// A batch read asks a local source to start fetching where the read jumps
/// to, a few jumps ahead, once for each stretch of close runs.
@Suite struct ReadAheadTests {
    /// A source (an archive in memory, read by one thread) that logs what it
    /// is asked to fetch ahead and what it reads.
    final class RecordingSource: ReadAheadSource {
        enum Event: Equatable { case ask(Range<UInt64>), read(Range<UInt64>) }
        let memory: MemorySource
        let events = Locked<[Event]>([])
        init(_ bytes: [UInt8]) { memory = MemorySource(bytes) }
        var size: UInt64 { memory.size }
        var name: String { memory.name }
        var readPlan: ReadPlan { ReadPlan(mergeGap: 0, maxReadSize: 0, concurrency: 1, readsHeaderAtOpen: true) }
        func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
            events.withLock { $0.append(.read(offset..<offset + UInt64(buffer.count))) }
            try memory.read(into: buffer, at: offset)
        }
        func willRead(_ range: Range<UInt64>) { events.withLock { $0.append(.ask(range)) } }
        var asked: [Range<UInt64>] {
            events.withLock { $0.compactMap { if case .ask(let range) = $0 { range } else { nil } } }
        }
    }

    @Test func closeRangesGroupUnderBothTheGapAndTheLength() {
        let ranges: [Range<UInt64>] = [0..<10, 5..<8, 12..<20, 40..<50, 50..<90, 95..<100]
        // Gap 2: 12 follows 10 by 2 (joins); 40 follows 20 by 20 (splits); an overlap is no gap.
        let byGap = closeGroups(ranges, gap: 2, maxLength: .max)
        #expect(byGap.members == [0..<3, 3..<5, 5..<6])
        #expect(byGap.spans == [0..<20, 40..<90, 95..<100])
        // Length 60: 0..<50 fits, 0..<90 would not, so 50..<90 starts a group, which 95..<100 joins.
        let byLength = closeGroups(ranges, gap: 100, maxLength: 60)
        #expect(byLength.members == [0..<4, 4..<6])
        #expect(byLength.spans == [0..<50, 50..<100])
        // Length 0 (a local file's plan): every range on its own.
        #expect(closeGroups(ranges, gap: 0, maxLength: 0).members == ranges.indices.map { $0..<$0 + 1 })
        #expect(closeGroups([], gap: 0, maxLength: 0).members.isEmpty)
    }

    @Test func stretchesStartWhereTheRunsJumpAndAreCutToTheAdvisedLength() {
        let source = RecordingSource([])
        let spans: [Range<UInt64>] = [0..<100, 100..<200, 150..<300,            // adjacent and overlapping: one stretch
                                      1_000_000..<1_000_100, 1_001_000..<1_002_000,   // a jump, then a gap under 64 KiB
                                      5_000_000..<7_000_000]                      // one run longer than the advised 1 MiB
        let readAhead = ReadAhead(source: source, spans: spans)
        #expect(readAhead.stretches == [0..<300, 1_000_000..<1_002_000, 5_000_000..<(5_000_000 + ReadAhead.advised)])
        #expect(readAhead.startsStretch == [0, nil, nil, 1, nil, 2])
        for run in spans.indices { readAhead.reached(run) }
        #expect(source.asked == readAhead.stretches)
    }

    @Test func eachStretchIsAskedForOnceAndNoFurtherThanAheadOfTheRunBeingRead() {
        let source = RecordingSource([])
        let count = 3 * ReadAhead.ahead
        let spans = (0..<count).map { UInt64($0) << 24 ..< (UInt64($0) << 24) + 4096 }
        let readAhead = ReadAhead(source: source, spans: spans)
        readAhead.reached(0)
        #expect(source.asked == Array(spans[0...ReadAhead.ahead]))
        readAhead.reached(1)
        readAhead.reached(1)
        #expect(source.asked == Array(spans[0...ReadAhead.ahead + 1]))
        // Reaching a run means every run before it was handed out already:
        // the stretches skipped over are not asked for, nor are earlier ones again.
        readAhead.reached(count - 2)
        readAhead.reached(5)
        #expect(source.asked == Array(spans[0...ReadAhead.ahead + 1] + spans[(count - 2)...]))
    }

    @Test func aBatchReadAsksForEachStretchBeforeReadingIt() throws {
        let frame = 4096
        let length = 40 * frame
        let contents = (0..<6).map { sampleBytes(length, seed: UInt64($0), compressible: false) }
        let source = RecordingSource(try buildArchive(options: WriterOptions(codec: .zstd, frameSize: frame)) { writer in
            for (k, bytes) in contents.enumerated() { try writer.addFile("f\(k)", contents: bytes) }
        })
        let reader = try ArchiveReader(source: source)
        // The first and last 100 bytes of each file (as a torch load reads
        // its items' ends): a file's tail lies close to the next one's head,
        // and far from its own head, so the twelve places make seven stretches.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 200 * contents.count, alignment: 1)
        defer { buffer.deallocate() }
        var ranges: [ArchiveReader.RangeRead] = []
        for k in contents.indices {
            let entry = try #require(reader.entry(named: "f\(k)"))
            for (half, offset) in [0, length - 100].enumerated() {
                let start = 200 * k + 100 * half
                ranges.append(.init(entry: entry, offset: UInt64(offset), buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + 100])))
            }
        }
        try reader.read(ranges)
        for k in contents.indices {
            #expect(Array(buffer[200 * k..<200 * k + 200]) == Array(contents[k].prefix(100) + contents[k].suffix(100)))
        }
        #expect(source.asked.count == 7)
        // From the first request on, every read lies in a stretch asked for before it.
        let events = source.events.withLock { $0 }
        let first = try #require(events.firstIndex { if case .ask = $0 { true } else { false } })
        var asked: [Range<UInt64>] = []
        for event in events[first...] {
            switch event {
            case .ask(let range): asked.append(range)
            case .read(let range): #expect(asked.contains { $0.lowerBound <= range.lowerBound && range.upperBound <= $0.upperBound }, "read \(range)")
            }
        }
    }
}
