/// The temporary files and folders this process is building. A run that is
/// interrupted (the CLI catches SIGINT, SIGTERM and SIGHUP) removes them
/// before it exits, so it leaves nothing of its own behind. Only what would be
/// lost anyway is tracked: never a user's previous destination moved aside.
public enum Interruption {
    private static let paths = Locked<Set<String>>([])

    static func track(_ path: String) { paths.withLock { _ = $0.insert(path) } }
    static func untrack(_ path: String) { paths.withLock { _ = $0.remove(path) } }

    /// Removes every tracked file and folder. Called from the thread that
    /// handles a signal, right before the process exits.
    public static func removeTracked() {
        for path in paths.withLock({ Array($0) }) { FileSystem.removeTree(path) }
    }
}
