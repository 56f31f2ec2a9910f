import Dispatch

/// Runs jobs on up to `threads` cores and hands their results to `sink` in
/// submission order, on the submitting thread. Jobs in flight (running or
/// waiting to be sunk) are bounded by count and by the sum of their costs
/// (bytes), so memory stays bounded however much is submitted, while many
/// small jobs can still overlap one large one. Small jobs are grouped into
/// batches of about `batchCost` bytes: handing each 128 KiB frame to a
/// thread on its own costs more in wake-ups than the work it moves.
final class OrderedPipeline<Output: Sendable> {
    typealias Job = @Sendable () throws -> Output

    private final class Slot: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        var cost = 0
        // Written by the worker before `done` is signalled, read after waiting:
        // the outputs of the batch's jobs up to the first that failed, and its error.
        var outputs: [Output] = []
        var error: Error?
    }

    private let threads: Int
    private let maxPending: Int
    private let maxCost: Int
    private let batchCost: Int
    private var pendingCost = 0
    private let running: DispatchSemaphore
    private var pending: [Slot] = []
    private var head = 0
    private var batch: [Job] = []
    private var batchedCost = 0
    private let sink: (Output) throws -> Void

    init(threads: Int, maxPending: Int, maxCost: Int = .max, batchCost: Int = 1 << 20, sink: @escaping (Output) throws -> Void) {
        self.threads = max(1, threads)
        self.maxPending = max(1, maxPending)
        self.maxCost = maxCost
        self.batchCost = batchCost
        // A few jobs queued per thread, so a thread that finishes a small job finds the next one waiting.
        self.running = DispatchSemaphore(value: 4 * self.threads)
        self.sink = sink
    }

    var pendingCount: Int { pending.count - head }

    /// Queues `work` of `cost` (bytes it holds); sinks finished results
    /// first, and waits while full.
    func submit(cost: Int = 0, _ work: @escaping Job) throws {
        batch.append(work)
        batchedCost += cost
        if batchedCost >= batchCost || batch.count >= 256 { try flushBatch() }
    }

    /// Queues a result that needs no work, keeping its place in the order. It
    /// joins the open batch: a tree of many small files then costs one
    /// hand-off per batch, not several per file.
    func submitReady(_ output: Output) throws {
        try submit(cost: 0) { output }
    }

    /// Sinks every queued result.
    func finish() throws {
        try flushBatch()
        while pendingCount > 0 { try sinkHead() }
    }

    /// Waits for every running job and drops all results (after an error).
    func abandon() {
        batch = []
        batchedCost = 0
        while pendingCount > 0 {
            pending[head].done.wait()
            pendingCost -= pending[head].cost
            head += 1
        }
        compact()
    }

    private func flushBatch() throws {
        guard !batch.isEmpty else { return }
        let jobs = batch, cost = batchedCost
        batch = []
        batchedCost = 0
        try sinkFinished()
        while pendingCount >= maxPending || (pendingCount > 0 && pendingCost + cost > maxCost) { try sinkHead() }
        let slot = Slot()
        slot.cost = cost
        pendingCost += cost
        let run: @Sendable () -> Void = {
            do {
                for job in jobs { slot.outputs.append(try job()) }
            } catch {
                slot.error = error
            }
        }
        if threads == 1 {
            run()
            slot.done.signal()
        } else {
            running.wait()
            let running = self.running
            DispatchQueue.global().async {
                run()
                running.signal()
                slot.done.signal()
            }
        }
        pending.append(slot)
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
        let outputs = slot.outputs, error = slot.error
        slot.outputs = []   // the queue must not keep sunk results alive
        for output in outputs { try sink(output) }
        if let error { throw error }
    }

    private func compact() {
        if head >= 16 && head * 2 > pending.count {
            pending.removeFirst(head)
            head = 0
        }
    }
}
