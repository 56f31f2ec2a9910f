#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs `body(i)` for every `i` in `0..<count` on up to `width` threads (the
/// caller's among them), each taking the next index. Threads of its own, not
/// GCD's pool: the work may block on the network for a long time, and GCD
/// would run only as many at once as there are cores. After a failure no
/// new index starts; the first error is rethrown once every thread is done.
func forEachConcurrently(_ count: Int, width: Int, _ body: (Int) throws -> Void) throws {
    if count <= 1 || width <= 1 {
        for i in 0..<count { try body(i) }
        return
    }
    try withoutActuallyEscaping(body) { body in
        let work = SharedWork(count: count, body: body)
        var threads: [pthread_t] = []
        for _ in 1..<min(width, count) {
            var thread = pthread_t()
            let context = Unmanaged.passRetained(work).toOpaque()
            if pthread_create(&thread, nil, { context in
                let work = Unmanaged<SharedWork>.fromOpaque(context!).takeRetainedValue()
                work.run()
                return nil
            }, context) == 0 {
                threads.append(thread)
            } else {
                Unmanaged<SharedWork>.fromOpaque(context).release()   // fewer threads; the work still gets done
            }
        }
        work.run()
        for thread in threads { pthread_join(thread, nil) }
        if let error = work.failure.withLock({ $0 }) { throw error }
    }
}

private final class SharedWork: @unchecked Sendable {
    let count: Int
    let body: (Int) throws -> Void
    let next = Locked(0)
    let failure = Locked<(any Error)?>(nil)

    init(count: Int, body: @escaping (Int) throws -> Void) {
        self.count = count
        self.body = body
    }

    func run() {
        while true {
            let i: Int? = next.withLock { next in
                guard next < count, failure.withLock({ $0 == nil }) else { return nil }
                defer { next += 1 }
                return next
            }
            guard let i else { return }
            do { try body(i) } catch {
                failure.withLock { if $0 == nil { $0 = error } }
            }
        }
    }
}

/// Runs `body` on a new detached thread (for work that blocks on the network).
package func runOnNewThread(_ body: @escaping @Sendable () -> Void) {
    final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
    let context = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    guard pthread_create(&thread, nil, { context in
        Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
        return nil
    }, context) == 0 else {
        Unmanaged<Box>.fromOpaque(context).takeRetainedValue().body()   // no thread to be had: run it here
        return
    }
    pthread_detach(thread)
}
