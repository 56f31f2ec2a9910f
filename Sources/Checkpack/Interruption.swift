/// The temporary files and folders this process is building. A run that is
/// interrupted (the CLI catches SIGINT, SIGTERM and SIGHUP) removes them
/// before it exits, so it leaves nothing of its own behind. Only what would be
/// lost anyway is tracked: never a user's previous destination moved aside.
/// Work begun elsewhere (a multipart upload) registers how to undo it.
package enum Interruption {
    private static let paths = Locked<Set<String>>([])
    private static let undos = Locked<(next: Int, actions: [Int: @Sendable () -> Void])>((0, [:]))

    /// True when `path` was not tracked yet.
    @discardableResult
    static func track(_ path: String) -> Bool { paths.withLock { $0.insert(path).inserted } }
    static func untrack(_ path: String) { paths.withLock { _ = $0.remove(path) } }

    /// Registers what undoes work in progress (aborting an upload); returns
    /// the token that unregisters it once the work is done or undone.
    public static func register(undo: @escaping @Sendable () -> Void) -> Int {
        undos.withLock { state in
            defer { state.next += 1 }
            state.actions[state.next] = undo
            return state.next
        }
    }

    public static func unregister(_ token: Int) { undos.withLock { _ = $0.actions.removeValue(forKey: token) } }

    /// Removes every tracked file and folder and runs every registered undo.
    /// Called from the thread that handles a signal, right before the process exits.
    public static func removeTracked() {
        for path in paths.withLock({ Array($0) }) { FileSystem.removeTree(path) }
        for undo in undos.withLock({ Array($0.actions.values) }) { undo() }
    }
}
