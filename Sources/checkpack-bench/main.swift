// checkpack-bench: Checkpack against its peers, each measured alternately
// with its peer in the same run on the same data; prints ratios.
//
//   swift run -c release checkpack-bench [--rounds N] [--weights model.safetensors] CHECKPOINT_DIR...
//
// For each torch checkpoint directory: pack and unpack vs tar + zstd -T0 -3
// (and size vs DIR-torch-zstd, the same state saved with torch's ZStandard
// extension, when it exists); peak RSS of checkpack's pack and unpack.
// With --weights: 4 KiB range reads from a 100 MB entry vs 26 KB entries,
// decode GB/s per core, and a full load through ArchiveStorageReader vs
// FileSystemStorageReader, all on those real weights as bfloat16.
import Checkpack
import Foundation

func usage() -> Never {
    FileHandle.standardError.write("usage: checkpack-bench [--rounds N] [--reads N] [--weights FILE.safetensors] [--checkpack PATH] CHECKPOINT_DIR...\n".data(using: .utf8)!)
    exit(2)
}

var rounds = 3, reads = 400
var weightsPath: String? = nil
var checkpack = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("checkpack").path
var checkpoints: [String] = []
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--rounds": guard let n = arguments.popFirst().flatMap(Int.init), n > 0 else { usage() }; rounds = n
    case "--reads": guard let n = arguments.popFirst().flatMap(Int.init), n > 0 else { usage() }; reads = n
    case "--weights": guard let p = arguments.popFirst() else { usage() }; weightsPath = p
    case "--checkpack": guard let p = arguments.popFirst() else { usage() }; checkpack = p
    case "-h", "--help": usage()
    default: checkpoints.append(argument)
    }
}
if checkpoints.isEmpty && weightsPath == nil { usage() }

do {
    let work = NSTemporaryDirectory() + "checkpack-bench-\(getpid())"
    try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: work) }
    print("checkpack-bench: \(ProcessInfo.processInfo.activeProcessorCount) cores; each row measured alternately with its peer\n")
    if !checkpoints.isEmpty {
        let results = try checkpoints.map { try comparePeers(checkpoint: $0, checkpack: checkpack, work: work, rounds: rounds) }
        print(peerTables(results, rounds: rounds) + "\n")
    }
    if let weightsPath {
        let weights = try Weights(safetensors: weightsPath)
        let planes = try measureReads(weights, work: work, planes: true, label: "byte planes, \(WriterOptions.defaultPlaneFrameSize >> 10) KiB frames (default)", reads: reads)
        let plain = try measureReads(weights, work: work, planes: false, label: "zstd only, 4 MiB frames (--no-planes)", reads: reads)
        print(readTable([planes, plain], reads: reads) + "\n")
        print(try compareLoads(weights, work: work, rounds: rounds))
    }
} catch {
    FileHandle.standardError.write("checkpack-bench: \(error)\n".data(using: .utf8)!)
    exit(1)
}
