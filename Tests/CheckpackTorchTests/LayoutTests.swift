import CheckpackTestSupport
import Checkpack
import CheckpackStorage
@testable import CheckpackTorch
import Foundation
import Testing

@Suite struct LayoutTests {
    @Test func everyItemAndEveryGapStartsAnItem() {
        let layout = CheckpointLayout.layout([
            (0..<100, "float32"), (100..<300, "int64"),
            (350..<1000, "bfloat16"),   // a gap of 50 before it
        ])
        #expect(layout.itemBoundaries == [100, 300, 350])
        #expect(layout.attributes[CheckpointLayout.itemDTypesKey] == "float32,int64,-,bfloat16")
    }

    @Test func aTorchCheckpointIsPackedWithFramesAtItsItems() throws {
        let folder = Scratch()
        let scratch = folder.path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        // A safetensors file: its header, a small tensor, a large one.
        let n = 40_000   // 160 KB of float32
        let header = #"{"small":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},"large":{"dtype":"F32","shape":[\#(n)],"data_offsets":[8,\#(8 + 4 * n)]}}"#
        var bytes = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian, Array.init) + Array(header.utf8)
        bytes += (0..<(8 + 4 * n)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try FileManager.default.createDirectory(atPath: scratch + "/model", withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: scratch + "/model/model.safetensors"))
        let layouts = try CheckpointLayout.layouts(forDirectory: scratch + "/model")
        let data = UInt64(8 + header.utf8.count), start = data + 8   // where "small" and "large" begin
        #expect(layouts["model.safetensors"]?.itemBoundaries == [data, start])
        #expect(layouts["model.safetensors"]?.attributes[CheckpointLayout.itemDTypesKey] == "-,bfloat16,float32")
        try Packer.pack(directory: scratch + "/model", to: scratch + "/m.ckpk",
                        options: WriterOptions(frameSize: 64 << 10), layouts: layouts)
        let reader = try ArchiveReader(path: scratch + "/m.ckpk")
        let entry = try #require(reader.entry(named: "model.safetensors"))
        #expect(try reader.itemBoundaries(of: entry) == [data, start])
        #expect(try reader.frameExtents(of: entry).map(\.entryRange.lowerBound).contains(start))
        #expect(try reader.read(entry) == bytes)

        // The torch fixture: its .metadata gives the items of each data file.
        let dcp = try CheckpointLayout.layouts(forDirectory: fixtures + "/example-checkpoint")
        #expect(Set(dcp.keys) == ["__0_0.distcp", "__1_0.distcp"])
        // Inside each torch.save item the storage record is an item of its own,
        // typed, between the zip's own records.
        let types = try #require(dcp["__0_0.distcp"]?.attributes[CheckpointLayout.itemDTypesKey])
        #expect(types == "-,bfloat16,-,-,float32,-")
        // Items that torch's ZStandard extension compressed are opaque.
        let compressed = try CheckpointLayout.layouts(forDirectory: fixtures + "/torch/zstd")
        #expect(compressed.values.allSatisfy { ($0.attributes[CheckpointLayout.itemDTypesKey] ?? "").split(separator: ",").allSatisfy { $0 == "-" } })
    }
}
