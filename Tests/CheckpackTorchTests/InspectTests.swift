import CheckpackTestSupport
import Checkpack
import CheckpackStorage
import CheckpackTorch
import Foundation
import Testing

@Suite struct InspectTests {
    @Test func aTorchDirectoryAndItsArchiveListTheSameTensors() throws {
        let folder = Scratch()
        let scratch = folder.path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        try Packer.pack(directory: fixtures + "/example-checkpoint", to: scratch + "/ex.ckpk")
        let direct = try Inspector.inspect(path: fixtures + "/example-checkpoint")
        let archived = try Inspector.inspect(path: scratch + "/ex.ckpk")
        #expect(direct.format == .torchDistributed && archived.format == .torchDistributed)
        #expect(!direct.inArchive && archived.inArchive)
        #expect(direct.items.map(\.name) == ["embed.weight", "extra.epoch", "extra.note", "linear.bias", "linear.weight", "mask", "step"])
        #expect(direct.items.map(\.name) == archived.items.map(\.name))
        let embed = try #require(archived.items.first { $0.name == "embed.weight" })
        #expect(embed.dtype == .bfloat16 && embed.shape == [64, 32] && embed.chunks.count == 2)
        #expect((embed.storedBytes ?? 0) > 0 && (embed.storedBytes ?? .max) < embed.bytes)
        #expect(direct.items.first { $0.name == "mask" }?.dtype == .bool)
        #expect(direct.items.first { $0.name == "step" }?.shape == [])
        #expect(direct.items.first { $0.name == "extra.note" }?.dtype == nil)
    }

    @Test func aHuggingFaceFolderListsWhatSafetensorsReads() throws {
        let expected = try #require(try JSONSerialization.jsonObject(with: Data(try fixtureBytes("torch/hf.expected.json"))) as? [String: [String: Any]])
        let inspection = try Inspector.inspect(path: fixtures + "/torch/hf")
        #expect(inspection.format == .safetensors)
        #expect(Set(inspection.items.map(\.name)) == Set(expected.keys))
        for item in inspection.items {
            #expect(item.dtype?.rawValue == expected[item.name]?["dtype"] as? String, "\(item.name)")
            #expect(item.shape == expected[item.name]?["shape"] as? [Int], "\(item.name)")
        }
    }

    @Test func safetensorsFilesAreReadFromTheirHeader() throws {
        let folder = Scratch()
        let scratch = folder.path
        try FileManager.default.createDirectory(atPath: scratch + "/model", withIntermediateDirectories: true)
        let header = #"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2,3],"data_offsets":[4,28]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#
        var bytes = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian, Array.init) + Array(header.utf8)
        bytes += [UInt8](repeating: 1, count: 28)
        try Data(bytes).write(to: URL(fileURLWithPath: scratch + "/model/model.safetensors"))
        let file = try Inspector.inspect(path: scratch + "/model/model.safetensors")
        #expect(file.format == .safetensors)
        #expect(file.items.map(\.name) == ["a", "b"])
        #expect(file.items.map(\.dtype) == [.bfloat16, .float32])
        #expect(file.items.last?.shape == [2, 3])
        try Packer.pack(directory: scratch + "/model", to: scratch + "/m.ckpk")
        let archived = try Inspector.inspect(path: scratch + "/m.ckpk")
        #expect(archived.items.map(\.bytes) == [4, 24])
        // A header whose byte ranges disagree with the shapes is refused.
        let bad = #"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#
        let badBytes = withUnsafeBytes(of: UInt64(bad.utf8.count).littleEndian, Array.init) + Array(bad.utf8) + [UInt8](repeating: 0, count: 8)
        try Data(badBytes).write(to: URL(fileURLWithPath: scratch + "/bad.safetensors"))
        #expect(Self.kind { try Inspector.inspect(path: scratch + "/bad.safetensors") } == .corrupt)
    }

    /// The kind of the CheckpackError `body` throws; nil when it throws nothing (or something else).
    static func kind(_ body: () throws -> Any) -> CheckpackError.Kind? {
        do {
            _ = try body()
            return nil
        } catch {
            return (error as? CheckpackError)?.kind
        }
    }

    /// A safetensors file with `header` and `data` zero bytes after it.
    static func safetensors(_ header: String, data: Int = 0) -> [UInt8] {
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian, Array.init) + Array(header.utf8) + [UInt8](repeating: 0, count: data)
    }

    @Test func hostileNumbersInMetadataEndCleanly() throws {
        let folder = Scratch()
        let scratch = folder.path
        try FileManager.default.createDirectory(atPath: scratch + "/st", withIntermediateDirectories: true)
        // A shape whose product overflows 64 bits (it trapped before), and one beyond 2^62 bytes.
        for shape in ["[4294967296, 4294967296, 16]", "[9223372036854775807, 2]", "[1073741824, 1073741824, 8]"] {
            let header = #"{"w":{"dtype":"F32","shape":"# + shape + #","data_offsets":[0,0]}}"#
            try Data(Self.safetensors(header)).write(to: URL(fileURLWithPath: scratch + "/st/model.safetensors"))
            #expect(Self.kind { try Inspector.inspect(path: scratch + "/st/model.safetensors") } == .corrupt, "\(shape)")
            #expect(Self.kind { try CheckpointLayout.layouts(forDirectory: scratch + "/st") } == .corrupt, "\(shape)")
        }
        // Storage offsets and chunk numbers near 2^63 in a JSON .metadata (this package's own).
        try save(["w": .tensor(Tensor.zeros(.float32, [4, 4]))], checkpointID: scratch + "/dcp", writer: FileSystemStorageWriter())
        let good = String(decoding: try Data(contentsOf: URL(fileURLWithPath: scratch + "/dcp/.metadata")), as: UTF8.self)
        func replacing(_ pattern: String, _ with: String) -> String {
            good.replacingOccurrences(of: pattern, with: with, options: .regularExpression)
        }
        let hostile = [
            replacing(#""offset" : [0-9]+"#, #""offset" : 9223372036854775807"#),
            replacing(#""length" : [0-9]+"#, #""length" : 18446744073709551615"#),
            replacing(#""offsets" : \[\s*0"#, #""offsets" : [ 9223372036854775807"#),
            replacing(#""size" : \[\s*4"#, #""size" : [ 4611686018427387904"#),
        ]
        for (n, text) in hostile.enumerated() {
            #expect(text != good, "case \(n) changed nothing")
            try FileManager.default.createDirectory(atPath: scratch + "/dcp\(n)", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: scratch + "/dcp/__0_0.distcp", toPath: scratch + "/dcp\(n)/__0_0.distcp")
            try Data(text.utf8).write(to: URL(fileURLWithPath: scratch + "/dcp\(n)/.metadata"))
            #expect(Self.kind { try Inspector.inspect(path: scratch + "/dcp\(n)") } == .corrupt, "case \(n)")
            #expect(Self.kind { try CheckpointLayout.layouts(forDirectory: scratch + "/dcp\(n)") } == .corrupt, "case \(n)")
        }
    }

    @Test func manyZeroSizeTensorsAreListed() throws {
        let folder = Scratch()
        let scratch = folder.path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let count = 300_000
        let header = "{" + (0..<count).map { #""t\#($0)":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}"# }.joined(separator: ",") + "}"
        try Data(Self.safetensors(header)).write(to: URL(fileURLWithPath: scratch + "/model.safetensors"))
        let inspection = try Inspector.inspect(path: scratch + "/model.safetensors")
        #expect(inspection.items.count == count)
    }
}
