import Dispatch

/// Runs jobs on up to `threads` cores and hands their results to `sink` in
/// submission order, on the submitting thread. Jobs in flight (running or
/// waiting to be sunk) are bounded by count and by the sum of their costs
/// (bytes), so memory stays bounded however much is submitted, while many
/// small jobs can still overlap one large one.
final class OrderedPipeline<Output: Sendable> {
    private final class Slot: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        var cost = 0
        // Written by the worker before `done` is signalled, read after waiting.
        var result: Result<Output, Error>?
    }

    private let threads: Int
    private let maxPending: Int
    private let maxCost: Int
    private var pendingCost = 0
    private let running: DispatchSemaphore
    private var pending: [Slot] = []
    private var head = 0
    private let sink: (Output) throws -> Void

    init(threads: Int, maxPending: Int, maxCost: Int = .max, sink: @escaping (Output) throws -> Void) {
        self.threads = max(1, threads)
        self.maxPending = max(1, maxPending)
        self.maxCost = maxCost
        // A few jobs queued per thread, so a thread that finishes a small job finds the next one waiting.
        self.running = DispatchSemaphore(value: 4 * self.threads)
        self.sink = sink
    }

    var pendingCount: Int { pending.count - head }

    /// Queues `work` of `cost` (bytes it holds); sinks finished results
    /// first, and waits while full.
    func submit(cost: Int = 0, _ work: @escaping @Sendable () throws -> Output) throws {
        try sinkFinished()
        while pendingCount >= maxPending || (pendingCount > 0 && pendingCost + cost > maxCost) { try sinkHead() }
        let slot = Slot()
        slot.cost = cost
        pendingCost += cost
        if threads == 1 {
            slot.result = Result(catching: work)
            slot.done.signal()
        } else {
            running.wait()
            let running = self.running
            DispatchQueue.global().async {
                slot.result = Result(catching: work)
                running.signal()
                slot.done.signal()
            }
        }
        pending.append(slot)
    }

    /// Queues a result that needs no work, keeping its place in the order.
    func submitReady(_ output: Output) throws {
        try sinkFinished()
        if pendingCount == 0 { return try sink(output) }
        while pendingCount >= maxPending { try sinkHead() }
        let slot = Slot()
        slot.result = .success(output)
        slot.done.signal()
        pending.append(slot)
    }

    /// Sinks every queued result.
    func finish() throws {
        while pendingCount > 0 { try sinkHead() }
    }

    /// Waits for every running job and drops all results (after an error).
    func abandon() {
        while pendingCount > 0 {
            pending[head].done.wait()
            pendingCost -= pending[head].cost
            head += 1
        }
        compact()
    }

    private func sinkFinished() throws {
        while pendingCount > 0, pending[head].done.wait(timeout: .now()) == .success {
            pending[head].done.signal()   // keep it signalled for sinkHead's wait
            try sinkHead()
        }
    }

    private func sinkHead() throws {
        let slot = pending[head]
        slot.done.wait()
        head += 1
        pendingCost -= slot.cost
        compact()
        guard let result = slot.result else { return }
        slot.result = nil   // the queue must not keep sunk results alive
        try sink(try result.get())
    }

    private func compact() {
        if head >= 16 && head * 2 > pending.count {
            pending.removeFirst(head)
            head = 0
        }
    }
}
