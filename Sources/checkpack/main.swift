import ArgumentParser
import Checkpack
import CSystemShims
#if canImport(Glibc)
import Glibc
#endif

/// Exit codes: 0 ok, 1 bad or damaged data (or a failed system call), 2 usage.
if CommandLine.arguments.count <= 1 {
    // No subcommand is a usage error: the help goes to stderr.
    writeStderr(CheckpackCommand.helpMessage() + "\n")
    exit(2)
}
// Paths are bytes. Swift repairs an argument that is not valid UTF-8 (with
// U+FFFD), which would name another path: refuse it rather than guess.
for i in 1..<Int(CommandLine.argc) {
    guard let raw = CommandLine.unsafeArgv[i] else { continue }
    let bytes = UnsafeBufferPointer(start: UnsafeRawPointer(raw).assumingMemoryBound(to: UInt8.self), count: strlen(raw))
    if String(validating: bytes, as: UTF8.self) == nil {
        printError("argument \(i) (\(String(decoding: bytes, as: UTF8.self))) is not valid UTF-8: names and paths must be UTF-8")
        exit(2)
    }
}
// Ctrl-C, kill and a closed terminal remove what this run was building, then exit 128 + signal.
let interruptions = handleInterruptions()
do {
    var command = try CheckpackCommand.parseAsRoot()
    try command.run()
    // Output that could not be written (a full disk, a closed pipe) is a failure, not a success.
    if ckpk_stdout_failed() != 0 {
        printError("cannot write to standard output: \(String(cString: strerror(errno)))")
        exit(1)
    }
} catch let error as CheckpackError {
    switch error.kind {
    case .alreadyExists:
        printError(error.description + " (use --force to replace it)")
        exit(2)
    case .invalidArgument:
        printError(error.description)
        exit(2)
    default:
        printError(error.description)
        exit(1)
    }
} catch let failure as CommandFailure {
    exit(failure.code)
} catch {
    let code = CheckpackCommand.exitCode(for: error)
    if code == .success {
        print(CheckpackCommand.fullMessage(for: error))
        exit(0)
    }
    // One line: the parser's message, then where to look for help.
    let message = CheckpackCommand.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
    printError("\(message) (see 'checkpack --help')")
    exit(2)
}
