// Timing, child processes with their peak RSS, and table output.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ text: String) { description = text }
}

/// A finished child: wall time and peak resident set size.
struct ChildRun {
    var seconds: Double
    var peakRSSBytes: Int
}

/// Runs `arguments` (argv[0] looked up in PATH) and waits with wait4 for its
/// exact resource use; a shell pipeline runs as ["/bin/sh", "-c", …].
func runChild(_ arguments: [String]) throws -> ChildRun {
    var pid: pid_t = 0
    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let start = now()
    let status = posix_spawnp(&pid, arguments[0], nil, nil, argv, environ)
    guard status == 0 else { throw BenchError("cannot start \(arguments[0]): \(String(cString: strerror(status)))") }
    var code: Int32 = 0
    var usage = rusage()
    while wait4(pid, &code, 0, &usage) < 0 {
        guard errno == EINTR else { throw BenchError("wait4 failed for \(arguments[0])") }
    }
    let seconds = now() - start
    guard code & 0x7F == 0, (code >> 8) & 0xFF == 0 else {
        throw BenchError("\(arguments.joined(separator: " ")) failed (status \(code))")
    }
    return ChildRun(seconds: seconds, peakRSSBytes: Int(usage.ru_maxrss) * 1024)
}

func shell(_ command: String) throws -> ChildRun { try runChild(["/bin/sh", "-c", command]) }

func quoted(_ path: String) -> String { "'" + path.replacingOccurrences(of: "'", with: "'\\''") + "'" }

func treeSize(_ path: String) -> UInt64 {
    guard let walker = FileManager.default.enumerator(atPath: path) else { return 0 }
    var total: UInt64 = 0
    for case let name as String in walker {
        if let attributes = try? FileManager.default.attributesOfItem(atPath: path + "/" + name),
           attributes[.type] as? FileAttributeType == .typeRegular {
            total += (attributes[.size] as? UInt64) ?? 0
        }
    }
    return total
}

func fileSize(_ path: String) -> UInt64 {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? UInt64) ?? 0
}

/// Rows of a left-aligned label and right-aligned columns.
struct Table {
    var header: [String]
    var rows: [[String]] = []

    func render() -> String {
        let all = [header] + rows
        let widths = (0..<header.count).map { c in all.map { $0.count > c ? $0[c].count : 0 }.max() ?? 0 }
        return all.map { row in
            row.enumerated().map { c, cell in
                c == 0 ? cell.padding(toLength: widths[0], withPad: " ", startingAt: 0)
                       : String(repeating: " ", count: widths[c] - cell.count + 2) + cell
            }.joined()
        }.joined(separator: "\n")
    }
}

func f(_ value: Double, _ digits: Int = 3) -> String { String(format: "%.\(digits)f", value) }
func mb(_ bytes: UInt64) -> String { String(format: "%.1f", Double(bytes) / 1e6) }
func mib(_ bytes: Int) -> String { String(format: "%.0f", Double(bytes) / 1048576) }
