import Checkpack
#if canImport(Glibc)
import Glibc
#endif
/// A failure on some rank during a collective step: every rank throws it,
/// with every failing rank's error (its kind kept).
public struct RankFailures: Error, CustomStringConvertible, Sendable {
    /// Every failing rank and its error, by rank.
    public var failures: [(rank: Int, error: CheckpackError)]
    /// The kind of the lowest failing rank's error: what a caller acts on.
    public var kind: CheckpackError.Kind { failures.first?.error.kind ?? .io(ECANCELED) }
    public var description: String {
        failures.map { "rank \($0.rank): \($0.error)" }.joined(separator: "; ")
    }
}

/// A step's outcome as it travels between ranks.
private enum Outcome<T: Sendable>: Sendable {
    case ok(T)
    case failed([Int: CheckpackError])

    init(rank: Int, _ body: () throws -> T) {
        do {
            self = .ok(try body())
        } catch let earlier as RankFailures {
            // A failure of an earlier step passing through: keep the ranks it names.
            self = .failed(Dictionary(earlier.failures.map { ($0.rank, $0.error) }, uniquingKeysWith: { a, _ in a }))
        } catch let error as CheckpackError {
            self = .failed([rank: error])
        } catch {
            self = .failed([rank: CheckpackError(.io(EIO), "\(error)")])
        }
    }

    func get() throws -> T {
        switch self {
        case .ok(let value): return value
        case .failed(let failures):
            throw RankFailures(failures: failures.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        }
    }

    /// All ranks' outcomes: their values, or every failure among them.
    static func combine(_ outcomes: [Outcome<T>]) -> Outcome<[T]> {
        var values: [T] = [], failures: [Int: CheckpackError] = [:]
        for outcome in outcomes {
            switch outcome {
            case .ok(let value): values.append(value)
            case .failed(let f): failures.merge(f) { a, _ in a }
            }
        }
        return failures.isEmpty ? .ok(values) : .failed(failures)
    }
}

/// Saves `stateDict` (this rank's part of it) through `writer`, running the
/// reference sequence across ranks: local plans are gathered to the
/// coordinator (rank 0), which makes the global plan and the metadata; every
/// rank writes its items; the coordinator finalizes. An error on any rank
/// reaches every rank, nothing is finalized after one, and every rank's
/// writer is told to `abort()`.
public func save(_ stateDict: StateDict, checkpointID: String, writer: StorageWriter,
                 planner: SavePlanner = DefaultSavePlanner(), collectives: Collectives = SingleProcess()) throws {
    let rank = collectives.rank, coordinator = rank == 0
    do {
        let local = Outcome<SavePlan>(rank: rank) {
            planner.setUp(stateDict: stateDict, isCoordinator: coordinator)
            try writer.initializeWriter(checkpointID: checkpointID)
            try writer.configureWriter(isCoordinator: coordinator, rank: rank, worldSize: collectives.worldSize)
            return try writer.optimizeLocalPlan(try planner.createLocalPlan())
        }
        let gathered = try collectives.gather(local, root: 0)
        var metadata: Metadata? = nil
        var central: [Outcome<SavePlan>]? = nil
        if let gathered {
            switch Outcome.combine(gathered) {
            case .failed(let f): central = Array(repeating: .failed(f), count: collectives.worldSize)
            case .ok(let plans):
                switch Outcome<(plans: [SavePlan], metadata: Metadata)>(rank: rank, {
                    let global = try planner.createGlobalPlan(plans)
                    return (try writer.optimizeGlobalPlan(global.plans), global.metadata)
                }) {
                case .ok(let global):
                    metadata = global.metadata
                    central = global.plans.map { .ok($0) }
                case .failed(let f): central = Array(repeating: .failed(f), count: collectives.worldSize)
                }
            }
        }
        let mine = try collectives.scatter(central, root: 0)
        let written = Outcome<[WriteResult]>(rank: rank) {
            let plan = try planner.finishPlan(try mine.get())
            return try writer.executeWrite(plan: plan, planner: planner)
        }
        let results = try collectives.gather(written, root: 0)
        var finished: Outcome<Bool>? = nil
        if let results {
            finished = switch Outcome.combine(results) {
            case .failed(let f): .failed(f)
            case .ok(let all):
                Outcome(rank: rank) {
                    guard let metadata else { throw CheckpackError(.invalidArgument, "no metadata on the coordinator") }
                    try writer.finalizeCheckpoint(metadata: metadata, results: all)
                    return true
                }
            }
        }
        _ = try collectives.broadcast(finished, root: 0).get()
    } catch {
        writer.abort()
        throw error
    }
}

/// Loads into `stateDict` — whose tensors give the wanted dtype, global shape
/// and local chunking, which may differ from the saved chunking — through
/// `reader`, and returns it filled. Every key must be in the checkpoint.
public func load(_ stateDict: StateDict, checkpointID: String, reader: StorageReader,
                 planner: LoadPlanner = DefaultLoadPlanner(), collectives: Collectives = SingleProcess()) throws -> StateDict {
    let rank = collectives.rank, coordinator = rank == 0
    let local = Outcome<LoadPlan>(rank: rank) {
        try reader.initializeReader(checkpointID: checkpointID)
        let metadata = try reader.loadMetadata()
        try reader.configureReader(metadata: metadata, isCoordinator: coordinator, rank: rank, worldSize: collectives.worldSize)
        planner.setUp(stateDict: stateDict, metadata: metadata, isCoordinator: coordinator)
        return try reader.optimizeLocalPlan(try planner.createLocalPlan())
    }
    var central: [Outcome<LoadPlan>]? = nil
    if let gathered = try collectives.gather(local, root: 0) {
        switch Outcome.combine(gathered) {
        case .failed(let f): central = Array(repeating: .failed(f), count: collectives.worldSize)
        case .ok(let plans):
            switch Outcome<[LoadPlan]>(rank: rank, {
                try reader.optimizeGlobalPlan(try planner.createGlobalPlan(plans))
            }) {
            case .ok(let global): central = global.map { .ok($0) }
            case .failed(let f): central = Array(repeating: .failed(f), count: collectives.worldSize)
            }
        }
    }
    let mine = try collectives.scatter(central, root: 0)
    let read = Outcome<Bool>(rank: rank) {
        try reader.executeRead(plan: try planner.finishPlan(try mine.get()), planner: planner)
        return true
    }
    var all: Outcome<[Bool]>? = nil
    if let results = try collectives.gather(read, root: 0) { all = Outcome.combine(results) }
    _ = try collectives.broadcast(all, root: 0).get()
    return planner.stateDict
}
