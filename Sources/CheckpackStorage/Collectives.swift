import Dispatch
import Checkpack
#if canImport(Glibc)
import Glibc
#endif

/// The communication a save or load needs between ranks. Every rank calls the
/// same operations in the same order.
public protocol Collectives: Sendable {
    /// This rank's number, from 0.
    var rank: Int { get }
    /// How many ranks take part.
    var worldSize: Int { get }
    /// `root` receives every rank's value, in rank order; the others receive nil.
    func gather<T: Sendable>(_ value: T, root: Int) throws -> [T]?
    /// Rank r receives `values[r]` of `root`'s array.
    func scatter<T: Sendable>(_ values: [T]?, root: Int) throws -> T
    /// Every rank receives `root`'s value.
    func broadcast<T: Sendable>(_ value: T?, root: Int) throws -> T
    /// Returns once every rank has called it.
    func barrier() throws
}

/// A single process: rank 0 of 1.
public struct SingleProcess: Collectives {
    /// The only rank.
    public init() {}
    public var rank: Int { 0 }
    public var worldSize: Int { 1 }
    public func gather<T: Sendable>(_ value: T, root: Int) throws -> [T]? { [value] }
    public func scatter<T: Sendable>(_ values: [T]?, root: Int) throws -> T {
        guard let value = values?.first else { throw CheckpackError(.invalidArgument, "scatter without values on the root") }
        return value
    }
    public func broadcast<T: Sendable>(_ value: T?, root: Int) throws -> T {
        guard let value else { throw CheckpackError(.invalidArgument, "broadcast without a value on the root") }
        return value
    }
    public func barrier() throws {}
}

/// N ranks as threads of one process, exchanging values in memory.
public final class InProcessGroup: Sendable {
    /// How many ranks the group has.
    public let worldSize: Int
    private let state = Locked<Round?>(nil)

    /// The values of one exchange; the last rank to arrive releases the others.
    private final class Round: @unchecked Sendable {
        var values: [(any Sendable)?]
        var arrived = 0
        let released = DispatchSemaphore(value: 0)
        init(_ n: Int) { values = Array(repeating: nil, count: n) }
    }

    /// A group of `worldSize` ranks.
    public init(worldSize: Int) {
        self.worldSize = worldSize
    }

    /// Every rank's value, in rank order, once all ranks have called.
    func allGather(_ value: any Sendable, rank: Int) -> [(any Sendable)?] {
        let (round, last) = state.withLock { current -> (Round, Bool) in
            let round = current ?? Round(worldSize)
            round.values[rank] = value
            round.arrived += 1
            let last = round.arrived == worldSize
            current = last ? nil : round
            return (round, last)
        }
        if last {
            for _ in 0..<worldSize { round.released.signal() }
        }
        round.released.wait()
        return round.values
    }

    /// Rank `rank`'s end of the group, for its thread.
    public func collectives(rank: Int) -> InProcessCollectives {
        InProcessCollectives(group: self, rank: rank)
    }

    /// Runs `body` once per rank, each on its own thread, and returns the
    /// results in rank order (rethrowing the lowest rank's error, if any).
    public static func run<T: Sendable>(worldSize: Int, _ body: @escaping @Sendable (InProcessCollectives) throws -> T) throws -> [T] {
        let group = InProcessGroup(worldSize: worldSize)
        let results = Locked<[Result<T, any Error>?]>(Array(repeating: nil, count: worldSize))
        let done = DispatchGroup()
        for rank in 0..<worldSize {
            done.enter()
            // A thread per rank: ranks block in collectives, so they must all run at once.
            spawnThread {
                let result = Result { try body(group.collectives(rank: rank)) }
                results.withLock { $0[rank] = result }
                done.leave()
            }
        }
        done.wait()
        return try results.withLock { $0 }.map { result in
            guard let result else { throw CheckpackError(.io(ECANCELED), "a rank did not finish") }
            return try result.get()
        }
    }
}

/// One rank's end of an `InProcessGroup`.
public struct InProcessCollectives: Collectives {
    let group: InProcessGroup
    public let rank: Int
    public var worldSize: Int { group.worldSize }

    private func exchange<T: Sendable>(_ value: T?) throws -> [T?] {
        group.allGather(value, rank: rank).map { $0 as? T }
    }

    public func gather<T: Sendable>(_ value: T, root: Int) throws -> [T]? {
        let all = try exchange(value)
        return rank == root ? all.compactMap { $0 } : nil
    }

    public func scatter<T: Sendable>(_ values: [T]?, root: Int) throws -> T {
        let all = try exchange(values)
        guard let values = all[root] ?? nil, values.indices.contains(rank) else { throw CheckpackError(.invalidArgument, "scatter from rank \(root) has no value for rank \(rank)") }
        return values[rank]
    }

    public func broadcast<T: Sendable>(_ value: T?, root: Int) throws -> T {
        let all = try exchange(value)
        guard let value = all[root] ?? nil else { throw CheckpackError(.invalidArgument, "broadcast from rank \(root) has no value") }
        return value
    }

    public func barrier() throws {
        _ = try exchange(0)
    }
}

/// Starts a detached thread running `body`.
func spawnThread(_ body: @escaping @Sendable () -> Void) {
    final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
    let context = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let started = pthread_create(&thread, nil, { raw in
        guard let raw else { return nil }
        Unmanaged<Box>.fromOpaque(raw).takeRetainedValue().body()
        return nil
    }, context)
    if started == 0 {
        pthread_detach(thread)
    } else {
        Unmanaged<Box>.fromOpaque(context).takeRetainedValue().body()   // no thread to be had: run here
    }
}
