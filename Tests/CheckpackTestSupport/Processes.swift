import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs the built `checkpack` executable the way a user would. Test targets
/// that use it declare the executable as a dependency, so it is built first.
public enum CLI {
    public static let executable: String = {
        let tests = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = URL(fileURLWithPath: tests).deletingLastPathComponent()
        // Inside an .xctest bundle directory on some layouts: step out of it.
        while dir.path.hasSuffix(".xctest") || dir.lastPathComponent == "MacOS" { dir.deleteLastPathComponent() }
        return dir.appendingPathComponent("checkpack").path
    }()

    public struct Result: Sendable {
        public var status: Int32
        public var stdout: Data
        public var stderr: String
        public var stderrLines: [Substring] { stderr.split(separator: "\n") }
    }

    /// Runs the tool to its end. `environment`, when given, replaces the
    /// test's own (PATH is kept).
    public static func run(_ arguments: [String], stdin: Data? = nil, environment: [String: String]? = nil) throws -> Result {
        let process = make(arguments, environment: environment)
        let out = Pipe(), err = Pipe(), input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        let feeder = JoinableThread {
            if let stdin { input.fileHandleForWriting.write(stdin) }
            try? input.fileHandleForWriting.close()
        }
        feeder.start()
        var stderrData = Data()
        let errorReader = JoinableThread { stderrData = err.fileHandleForReading.readDataToEndOfFile() }
        errorReader.start()
        let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        errorReader.join()
        process.waitUntilExit()
        feeder.join()
        return Result(status: process.terminationStatus, stdout: stdoutData, stderr: String(decoding: stderrData, as: UTF8.self))
    }

    /// Starts the tool with its output discarded, for a test that signals it.
    public static func start(_ arguments: [String], environment: [String: String]? = nil) throws -> Process {
        let process = make(arguments, environment: environment)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    private static func make(_ arguments: [String], environment: [String: String]?) -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment {
            process.environment = environment.merging(["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"]) { a, _ in a }
        }
        return process
    }
}

/// A thread that can be joined (Foundation's Thread cannot).
public final class JoinableThread: @unchecked Sendable {
    private var handle = pthread_t()
    private let body: () -> Void
    public init(_ body: @escaping () -> Void) { self.body = body }
    public func start() {
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&handle, nil, { raw in
            let me = Unmanaged<JoinableThread>.fromOpaque(raw!).takeRetainedValue()
            me.body()
            return nil
        }, box)
    }
    public func join() { pthread_join(handle, nil) }
}
