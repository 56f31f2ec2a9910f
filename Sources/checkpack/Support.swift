import ArgumentParser
import Dispatch
import Checkpack
#if canImport(Glibc)
import Glibc
#endif

/// A command that already reported its problems and only needs to exit.
struct CommandFailure: Error {
    var code: Int32
}

/// One line on stderr; control characters are escaped whatever their source.
func printError(_ line: String) {
    writeStderr("checkpack: \(CheckpackError.escapingControlCharacters(line))\n")
}

/// Writes straight to file descriptor 2 (unbuffered, as stderr should be).
func writeStderr(_ text: String) {
    var bytes = Array(text.utf8)
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + done, $0.count - done) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return }
        done += n
    }
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
final class ProgressBar {
    private let label: String
    private let enabled: Bool
    private let start = monotonicSeconds()
    private var lastDraw = 0.0

    init(_ label: String, quiet: Bool) {
        self.label = label
        self.enabled = !quiet && isatty(2) == 1
    }

    func update(_ done: UInt64, total: UInt64?) {
        guard enabled else { return }
        let now = monotonicSeconds()
        guard now - lastDraw >= 0.1 else { return }
        lastDraw = now
        let rate = Double(done) / max(now - start, 1e-6)
        var line = "\r\(label) \(ByteSize.format(done))"
        if let total, total > 0 {
            line += " / \(ByteSize.format(total)) (\(Int(Double(done) * 100 / Double(total)))%)"
        }
        line += "  \(ByteSize.format(UInt64(rate)))/s\u{1B}[K"
        writeStderr(line)
    }

    func clear() {
        if enabled { writeStderr("\r\u{1B}[K") }
    }
}

struct SizeArgument: ExpressibleByArgument {
    var bytes: Int
    init?(argument: String) {
        guard let bytes = ByteSize.parse(argument) else { return nil }
        self.bytes = bytes
    }
    static var defaultCompletionKind: CompletionKind { .default }
    /// How the default shows in --help: 32K, 4M (the form the option takes).
    var defaultValueDescription: String {
        for (suffix, shift) in [("G", 30), ("M", 20), ("K", 10)] where bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }
}

extension Codec: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
    public static var allValueStrings: [String] { ["zstd", "zlib", "none"] }
}

/// The share of `size` that `stored` takes, as "78.3%".
func ratio(_ stored: UInt64, _ size: UInt64) -> String {
    guard size > 0 else { return "-" }
    let percent = (Double(stored) * 1000 / Double(size)).rounded() / 10
    return "\(percent)%"
}

/// Minimal JSON rendering for `--json` output.
enum JSON {
    case string(String)
    case number(UInt64)
    case bool(Bool)
    case array([JSON])
    case object([(String, JSON)])

    func rendered(indent: String = "") -> String {
        switch self {
        case .string(let s): return JSON.quote(s)
        case .number(let n): return String(n)
        case .bool(let b): return b ? "true" : "false"
        case .array(let items):
            if items.isEmpty { return "[]" }
            let inner = indent + "  "
            return "[\n" + items.map { inner + $0.rendered(indent: inner) }.joined(separator: ",\n") + "\n\(indent)]"
        case .object(let fields):
            if fields.isEmpty { return "{}" }
            let inner = indent + "  "
            return "{\n" + fields.map { inner + JSON.quote($0.0) + ": " + $0.1.rendered(indent: inner) }.joined(separator: ",\n") + "\n\(indent)}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// Reports what interrupted runs left beside `destination` (never removes
/// it: a run still in progress may own it).
/// SIGINT, SIGTERM and SIGHUP remove the temporary files and folders this run
/// was building (`Interruption`), then exit with 128 + the signal. The
/// handlers run on a dispatch queue, not in signal context; keep the sources.
func handleInterruptions() -> [DispatchSourceSignal] {
    [SIGINT, SIGTERM, SIGHUP].map { number in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler {
            Interruption.removeTracked()
            _exit(128 + number)
        }
        source.resume()
        return source
    }
}

/// Warns of what interrupted runs left; --quiet does not silence warnings.
func reportLeftovers(beside destination: String) {
    for path in Leftovers.find(beside: destination) {
        printError("warning: \(path) was left by an interrupted run; remove it if no other checkpack is writing \(destination)")
    }
}

/// Prints rows as aligned columns: the first row is the header; columns in
/// `rightAligned` (numbers) are padded on the left.
func printTable(_ rows: [[String]], rightAligned: Set<Int>) {
    guard let first = rows.first else { return }
    let widths = first.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
    for row in rows {
        let cells = row.enumerated().map { column, cell -> String in
            if column == row.count - 1 && !rightAligned.contains(column) { return cell }
            let pad = String(repeating: " ", count: widths[column] - cell.count)
            return rightAligned.contains(column) ? pad + cell : cell + pad
        }
        print(cells.joined(separator: "  "))
    }
}
