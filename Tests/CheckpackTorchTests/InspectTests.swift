import Checkpack
import CheckpackStorage
import CheckpackTorch
import Foundation
import Testing

@Suite struct InspectTests {
    @Test func aTorchDirectoryAndItsArchiveListTheSameTensors() throws {
        let scratch = NSTemporaryDirectory() + "inspect-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
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
        let scratch = NSTemporaryDirectory() + "inspect-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
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
        #expect(throws: CheckpointError.self) { try Inspector.inspect(path: scratch + "/bad.safetensors") }
    }
}
