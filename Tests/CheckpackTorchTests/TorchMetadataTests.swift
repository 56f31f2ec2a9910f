import CheckpackTestSupport
import CheckpackStorage
import CheckpackTorch
import Foundation
import Testing

let fixtures: String = {
    var path = #filePath
    for _ in 0..<3 { path = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) }
    return path + "/fixtures"
}()

func fixtureBytes(_ name: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: fixtures + "/" + name)))
}

@Suite struct TorchMetadataTests {
    /// Compares the decoded `.metadata` of a fixture checkpoint with torch's
    /// own reading of it (written beside it by the fixture scripts).
    func expectSameAsTorch(_ checkpoint: String, expected: String) throws -> TorchCheckpointMetadata {
        let decoded = try TorchMetadataReader.decode(try fixtureBytes(checkpoint + "/.metadata"))
        let want = try #require(try JSONSerialization.jsonObject(with: Data(try fixtureBytes(expected))) as? [String: Any])
        #expect(decoded.version == want["version"] as? String)
        let state = try #require(want["state_dict"] as? [String: [String: Any]])
        #expect(Set(decoded.metadata.stateDictMetadata.keys) == Set(state.keys), "\(checkpoint)")
        for (fqn, item) in state {
            switch decoded.metadata.stateDictMetadata[fqn] {
            case .bytes?:
                #expect(item["type"] as? String == "bytes", "\(fqn)")
            case .tensor(let t)?:
                #expect(item["type"] as? String == "tensor", "\(fqn)")
                #expect(t.properties.dtype.rawValue == item["dtype"] as? String, "\(fqn)")
                #expect(t.size == item["size"] as? [Int], "\(fqn)")
                let chunks = (item["chunks"] as? [[String: [Int]]] ?? []).map { ChunkStorageMetadata(offsets: $0["offsets"] ?? [], sizes: $0["sizes"] ?? []) }
                #expect(t.chunks == chunks, "\(fqn)")
            case nil:
                Issue.record("\(checkpoint): \(fqn) missing")
            }
        }
        let storage = try #require(want["storage"] as? [[String: Any]])
        #expect(decoded.metadata.storageData.count == storage.count)
        for item in storage {
            let index = MetadataIndex(fqn: item["fqn"] as? String ?? "", offset: item["offset"] as? [Int])
            let info = try #require(decoded.metadata.storageData[index], "\(index)")
            #expect(info.relativePath == item["relative_path"] as? String)
            #expect(info.offset == (item["byte_offset"] as? NSNumber)?.uint64Value)
            #expect(info.length == (item["length"] as? NSNumber)?.uint64Value)
            #expect(decoded.transformDescriptors[index] ?? [] == item["transform_descriptors"] as? [String], "\(index)")
        }
        return decoded
    }

    @Test func decodesRealCheckpointsExactlyAsTorchReadsThem() throws {
        let sharded = try expectSameAsTorch("example-checkpoint", expected: "example-checkpoint.metadata.json")
        #expect(sharded.storageMeta?.saveID != nil)
        _ = try expectSameAsTorch("torch/single", expected: "torch/single.expected.json")
        let zstd = try expectSameAsTorch("torch/zstd", expected: "torch/zstd.expected.json")
        #expect(!zstd.transformDescriptors.isEmpty)
    }

    @Test func forbiddenGlobalsAreNamedNotCalled() throws {
        // GLOBAL 'os system', a string argument, REDUCE, STOP: the classic payload.
        let payload: [UInt8] = Array("cos\nsystem\n".utf8) + [0x8C, 4] + Array("echo".utf8) + [0x85, UInt8(ascii: "R"), UInt8(ascii: ".")]
        let error = #expect(throws: PickleError.self) { try TorchMetadataReader.decode(payload) }
        #expect(error?.message == "global os.system is not allowed")
        let builtins: [UInt8] = [0x80, 4, 0x8C, 8] + Array("builtins".utf8) + [0x8C, 4] + Array("eval".utf8) + [0x93, UInt8(ascii: ".")]
        let eval = #expect(throws: PickleError.self) { try TorchMetadataReader.decode(builtins) }
        #expect(eval?.description.contains("builtins.eval") == true)
    }

    @Test func malformedPicklesAreErrors() throws {
        let reader = PickleReader(allowed: TorchMetadataReader.allowed)
        let cases: [([UInt8], String)] = [
            ([], "no STOP"),
            ([UInt8(ascii: ".")], "underflow"),
            ([UInt8(ascii: "h"), 7, UInt8(ascii: ".")], "memo 7"),
            ([UInt8(ascii: "P")] + Array("id\n.".utf8), "not supported"),
            ([0x8D, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], "runs past the end"),
            ([0x8B, 9, 0, 0, 0] + [UInt8](repeating: 1, count: 9) + [UInt8(ascii: ".")], "64 bits"),
            ([UInt8(ascii: "u"), UInt8(ascii: ".")], "mark"),
            ([0x8C, 2, 0xC3, 0x28, UInt8(ascii: ".")], "UTF-8"),
        ]
        for (bytes, message) in cases {
            let error = #expect(throws: PickleError.self, "\(message)") { try reader.read(bytes) }
            #expect(error?.message.contains(message) == true, "\(bytes): \(String(describing: error))")
        }
    }

    @Test func recursiveAndDeeplyNestedPicklesAreRefused() throws {
        let reader = PickleReader(allowed: TorchMetadataReader.allowed)
        let o = { (c: Character) in UInt8(ascii: c.unicodeScalars.first!) }
        let cases: [([UInt8], String)] = [
            // A list appended to itself: ] 2 a .
            ([o("]"), o("2"), o("a"), o(".")], "changed after it was used"),
            // Two lists that contain each other through the memo: ] q0 ] q1 h0 a h1 a ... 
            ([o("]"), o("q"), 0, o("]"), o("q"), 1, o("h"), 0, o("a"), o("0"), o("h"), 0, o("h"), 1, o("a"), o("."),], "changed after it was used"),
            // A million nested 1-tuples.
            ([o("N")] + [UInt8](repeating: 0x85, count: 1_000_000) + [o(".")], "nest deeper"),
            // A dict filled after it went into a tuple.
            ([o("}"), o("q"), 0, 0x85, o("h"), 0, o("N"), o("N"), o("s"), o(".")], "changed after it was used"),
        ]
        for (bytes, message) in cases {
            let error = #expect(throws: PickleError.self, "\(message)") { try reader.read(bytes) }
            #expect(error?.message.contains(message) == true, "\(String(describing: error))")
        }
        // Shared, complete containers are fine: the same list twice in a tuple.
        let shared: [UInt8] = [o("]"), o("q"), 0, o("N"), o("a"), o("h"), 0, 0x86, o(".")]
        guard case .tuple(let items) = try reader.read(shared), items.count == 2 else { Issue.record("shared list"); return }
    }

    /// Inputs the fuzzer once found trouble with (fuzz/regressions/pickle):
    /// each must be read or refused cleanly; under AddressSanitizer, without leaks.
    @Test func fuzzerFindingsStayFixed() throws {
        let directory = fixtures + "/../fuzz/regressions/pickle"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        #expect(!names.isEmpty)
        for name in names {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name)))
            _ = try? TorchMetadataReader.decode(bytes)
        }
    }

    @Test func everyTruncationAndBitFlipOfRealMetadataIsHandled() throws {
        let bytes = try fixtureBytes("example-checkpoint/.metadata")
        for length in 0..<bytes.count {
            #expect(throws: (any Error).self, "prefix \(length)") { try TorchMetadataReader.decode(Array(bytes[..<length])) }
        }
        // A flipped bit either still decodes or is an error; it never crashes or hangs.
        for position in bytes.indices {
            var damaged = bytes
            damaged[position] ^= UInt8(1 << (position % 8))
            _ = try? TorchMetadataReader.decode(damaged)
        }
    }
}
