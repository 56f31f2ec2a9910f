import CheckpackTestSupport
import Checkpack
import CheckpackStorage
import Testing
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Helpers

/// A tensor whose bytes depend on `seed`, deterministic.
func pattern(_ dtype: DType, _ shape: [Int], seed: Int) -> Tensor {
    let count = shape.reduce(1, *) * dtype.elementSize
    var state = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15 | 1
    let bytes = (0..<count).map { _ -> UInt8 in
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return UInt8(truncatingIfNeeded: state)
    }
    return try! Tensor(dtype: dtype, shape: shape, bytes: bytes)   // test data of a valid size
}

/// The global tensors every test checkpoint holds.
enum Model {
    static let embed = pattern(.bfloat16, [12, 10], seed: 1)
    static let linear = pattern(.float32, [9, 7], seed: 2)
    static let bias = pattern(.float32, [7], seed: 3)
    static let step = pattern(.int64, [], seed: 4)
    static let empty = pattern(.float16, [0, 5], seed: 5)
    static let blob: [UInt8] = Array("epoch=3".utf8)

    /// Rank `rank`'s state dict: matrices sharded on `dimension`, the rest replicated.
    static func stateDict(rank: Int, worldSize: Int, dimension: Int = 0) throws -> StateDict {
        [
            "embed.weight": .sharded(try .evenShard(of: embed, dimension: dimension, rank: rank, worldSize: worldSize)),
            "linear.weight": .sharded(try .evenShard(of: linear, dimension: dimension, rank: rank, worldSize: worldSize)),
            "linear.bias": .tensor(bias),
            "step": .tensor(step),
            "empty": .tensor(empty),
            "extra": .bytes(blob),
        ]
    }

    /// What to load into: zeros of the same layout.
    static func destination(rank: Int, worldSize: Int, dimension: Int) throws -> StateDict {
        [
            "embed.weight": .sharded(try .zerosEvenShard(.bfloat16, globalShape: [12, 10], dimension: dimension, rank: rank, worldSize: worldSize)),
            "linear.weight": .sharded(try .zerosEvenShard(.float32, globalShape: [9, 7], dimension: dimension, rank: rank, worldSize: worldSize)),
            "linear.bias": .tensor(.zeros(.float32, [7])),
            "step": .tensor(.zeros(.int64, [])),
            "empty": .tensor(.zeros(.float16, [0, 5])),
            "extra": .bytes([]),
        ]
    }

    static func wholeDestination() -> StateDict {
        [
            "embed.weight": .tensor(.zeros(.bfloat16, [12, 10])),
            "linear.weight": .tensor(.zeros(.float32, [9, 7])),
            "linear.bias": .tensor(.zeros(.float32, [7])),
            "step": .tensor(.zeros(.int64, [])),
            "empty": .tensor(.zeros(.float16, [0, 5])),
            "extra": .bytes([]),
        ]
    }
}

enum Backend: String, CaseIterable, Sendable {
    case directory, archive
    func writer() -> StorageWriter {
        self == .directory ? FileSystemStorageWriter() : ArchiveStorageWriter(options: WriterOptions(frameSize: 4096, threads: 2))
    }
    func reader() -> StorageReader { self == .directory ? FileSystemStorageReader() : ArchiveStorageReader() }
    func id(_ scratch: Scratch) -> String { scratch.sub(self == .directory ? "ckpt" : "ckpt.ckpk") }
}

func saveOnRanks(_ worldSize: Int, _ backend: Backend, _ id: String, dimension: Int = 0) throws {
    _ = try InProcessGroup.run(worldSize: worldSize) { group in
        try save(Model.stateDict(rank: group.rank, worldSize: worldSize, dimension: dimension), checkpointID: id,
                 writer: backend.writer(), collectives: group)
    }
}

func expectEqualToModel(_ loaded: StateDict, rank: Int, worldSize: Int, dimension: Int) throws {
    let expected = try Model.stateDict(rank: rank, worldSize: worldSize, dimension: dimension)
    for (key, value) in expected { #expect(loaded[key] == value, "rank \(rank) of \(worldSize): \(key)") }
}

// MARK: - Tests

@Suite struct SaveLoadTests {
    @Test(arguments: [1, 2, 3, 8], Backend.allCases)
    func saveAndLoadOnRanks(worldSize: Int, backend: Backend) throws {
        let scratch = Scratch()
        let id = backend.id(scratch)
        try saveOnRanks(worldSize, backend, id)
        let loaded = try InProcessGroup.run(worldSize: worldSize) { group in
            try load(Model.destination(rank: group.rank, worldSize: worldSize, dimension: 0), checkpointID: id,
                     reader: backend.reader(), collectives: group)
        }
        for (rank, dict) in loaded.enumerated() { try expectEqualToModel(dict, rank: rank, worldSize: worldSize, dimension: 0) }
        if backend == .archive {
            #expect(scratch.contents == ["ckpt.ckpk"], "staging left: \(scratch.contents)")
            let archive = try ArchiveReader(path: id)
            // Each rank wrote into its own region of one file; each gap between two became a
            // padding entry of at most a block, and the rest of it was collapsed out.
            let data = (0..<worldSize).map { "__\($0)_0.distcp" }, paddings = (1..<worldSize).map { "\(SharedFile.paddingPrefix)\($0)" }
            #expect(archive.entries.map(\.name) == zip(data, paddings).flatMap { [$0, $1] } + [data[worldSize - 1], ".metadata"])
            #expect(archive.entries.filter { $0.name.hasPrefix(SharedFile.paddingPrefix) }.allSatisfy { $0.size <= 64 << 10 })
            #expect(try archive.verify().isEmpty)
        }
    }

    @Test(arguments: Backend.allCases)
    func reshardFourRanksOnDimZeroToThreeRanksOnDimOneAndToWhole(backend: Backend) throws {
        let scratch = Scratch()
        let id = backend.id(scratch)
        try saveOnRanks(4, backend, id, dimension: 0)
        let loaded = try InProcessGroup.run(worldSize: 3) { group in
            try load(Model.destination(rank: group.rank, worldSize: 3, dimension: 1), checkpointID: id,
                     reader: backend.reader(), collectives: group)
        }
        for (rank, dict) in loaded.enumerated() { try expectEqualToModel(dict, rank: rank, worldSize: 3, dimension: 1) }
        let whole = try load(Model.wholeDestination(), checkpointID: id, reader: backend.reader())
        #expect(whole["embed.weight"] == .tensor(Model.embed))
        #expect(whole["linear.weight"] == .tensor(Model.linear))
        #expect(whole["step"] == .tensor(Model.step))
        #expect(whole["extra"] == .bytes(Model.blob))
    }

    @Test(arguments: DType.allCases)
    func everyDTypeRoundTrips(dtype: DType) throws {
        let scratch = Scratch()
        let tensor = pattern(dtype, [3, 5], seed: 9)
        let id = scratch.sub("d.ckpk")
        try save(["t": .tensor(tensor), "s": .tensor(pattern(dtype, [], seed: 10))], checkpointID: id, writer: ArchiveStorageWriter())
        let loaded = try load(["t": .tensor(.zeros(dtype, [3, 5])), "s": .tensor(.zeros(dtype, []))], checkpointID: id,
                              reader: ArchiveStorageReader())
        #expect(loaded["t"] == .tensor(tensor))
        #expect(loaded["s"] == .tensor(pattern(dtype, [], seed: 10)))
    }

    @Test func aPartialReadDecodesOnlyTheFramesItTouches() throws {
        let scratch = Scratch()
        let id = scratch.sub("big.ckpk")
        let big = pattern(.float32, [64, 4096], seed: 3)   // 1 MiB, 16 KiB a row
        var options = WriterOptions(frameSize: 64 << 10)
        options.planeFrameSize = 64 << 10   // tensors go into byte planes, in frames of this size
        try save(["big": .tensor(big), "small": .tensor(Model.bias)], checkpointID: id,
                 writer: ArchiveStorageWriter(options: options))
        let reader = ArchiveStorageReader()
        // Rows 0..<8 of 64: the first 128 KiB, two 64 KiB frames.
        let slice = try load(["big": .sharded(try .zerosEvenShard(.float32, globalShape: [64, 4096], dimension: 0, rank: 0, worldSize: 8))],
                             checkpointID: id, reader: reader)
        let archive = try #require(reader.archive)
        let metadataFrames = try #require(archive.entry(named: ".metadata")).frameCount
        #expect(archive.framesDecoded == Int(metadataFrames) + 2)
        let expected = try ShardedTensor.evenShard(of: big, dimension: 0, rank: 0, worldSize: 8)
        #expect(slice["big"] == .sharded(expected))
        #expect(archive.entry(named: "__0_0.distcp")?.frameCount == 17)
    }

    @Test func aRankThatFailsMidWriteLeavesNoArchiveAndNoStaging() throws {
        let scratch = Scratch()
        let id = scratch.sub("fail.ckpk")
        final class FailingPlanner: SavePlanner {
            let inner = DefaultSavePlanner()
            let fail: Bool
            init(fail: Bool) { self.fail = fail }
            func setUp(stateDict: StateDict, isCoordinator: Bool) { inner.setUp(stateDict: stateDict, isCoordinator: isCoordinator) }
            func createLocalPlan() throws -> SavePlan { try inner.createLocalPlan() }
            func createGlobalPlan(_ plans: [SavePlan]) throws -> (plans: [SavePlan], metadata: Metadata) { try inner.createGlobalPlan(plans) }
            func finishPlan(_ plan: SavePlan) throws -> SavePlan { plan }
            func resolveData(_ item: WriteItem) throws -> [UInt8] {
                if fail && item.index.fqn == "linear.weight" { throw CheckpackError(.io(EIO), "disk on fire") }
                return try inner.resolveData(item)
            }
        }
        let outcomes = try InProcessGroup.run(worldSize: 3) { group -> String? in
            do {
                try save(Model.stateDict(rank: group.rank, worldSize: 3), checkpointID: id, writer: ArchiveStorageWriter(),
                         planner: FailingPlanner(fail: group.rank == 1), collectives: group)
                return nil
            } catch {
                return "\(error)"
            }
        }
        for outcome in outcomes { #expect(outcome?.contains("rank 1: disk on fire") == true, "\(String(describing: outcome))") }
        #expect(scratch.contents.isEmpty, "left: \(scratch.contents)")
    }
}

@Suite struct BackendsMeetTests {
    @Test func anUnpackedArchiveLoadsWithTheDirectoryBackend() throws {
        let scratch = Scratch()
        try saveOnRanks(2, .archive, scratch.sub("a.ckpk"))
        try Unpacker.unpack(archive: scratch.sub("a.ckpk"), to: scratch.sub("unpacked"))
        let loaded = try load(Model.wholeDestination(), checkpointID: scratch.sub("unpacked"), reader: FileSystemStorageReader())
        #expect(loaded["embed.weight"] == .tensor(Model.embed))
        #expect(loaded["extra"] == .bytes(Model.blob))
    }

    @Test func aPackedDirectoryLoadsWithTheArchiveBackend() throws {
        let scratch = Scratch()
        try saveOnRanks(3, .directory, scratch.sub("dir"))
        try Packer.pack(directory: scratch.sub("dir"), to: scratch.sub("packed.ckpk"))
        let loaded = try load(Model.wholeDestination(), checkpointID: scratch.sub("packed.ckpk"), reader: ArchiveStorageReader())
        #expect(loaded["linear.weight"] == .tensor(Model.linear))
        #expect(loaded["linear.bias"] == .tensor(Model.bias))
    }
}

@Suite struct BadInputTests {
    func saved(in scratch: Scratch) throws -> String {
        let id = scratch.sub("c.ckpk")
        try save(try Model.stateDict(rank: 0, worldSize: 1), checkpointID: id, writer: ArchiveStorageWriter())
        return id
    }

    @Test func aMissingKeyIsAnError() throws {
        let scratch = Scratch()
        let id = try saved(in: scratch)
        let error = #expect(throws: (any Error).self) {
            try load(["nope": .tensor(.zeros(.float32, [1]))], checkpointID: id, reader: ArchiveStorageReader())
        }
        #expect("\(error!)".contains("no \"nope\""))
    }

    @Test func dtypeAndShapeMismatchesAreErrors() throws {
        let scratch = Scratch()
        let id = try saved(in: scratch)
        let dtype = #expect(throws: (any Error).self) {
            try load(["linear.bias": .tensor(.zeros(.float64, [7]))], checkpointID: id, reader: ArchiveStorageReader())
        }
        #expect("\(dtype!)".contains("float32"))
        let shape = #expect(throws: (any Error).self) {
            try load(["linear.bias": .tensor(.zeros(.float32, [8]))], checkpointID: id, reader: ArchiveStorageReader())
        }
        #expect("\(shape!)".contains("shape"))
    }

    @Test func metadataNamingAMissingFileOrRangeIsAnErrorNamingTheItem() throws {
        let scratch = Scratch()
        try saveOnRanks(2, .directory, scratch.sub("dir"))
        unlink(scratch.sub("dir/__1_0.distcp"))
        let missing = #expect(throws: (any Error).self) {
            try load(Model.wholeDestination(), checkpointID: scratch.sub("dir"), reader: FileSystemStorageReader())
        }
        #expect("\(missing!)".contains("__1_0.distcp"))
        // An archive packed without that file: the error names the logical file.
        try Packer.pack(directory: scratch.sub("dir"), to: scratch.sub("p.ckpk"))
        let inArchive = #expect(throws: (any Error).self) {
            try load(Model.wholeDestination(), checkpointID: scratch.sub("p.ckpk"), reader: ArchiveStorageReader())
        }
        #expect("\(inArchive!)".contains("no entry \"__1_0.distcp\""))
        #expect("\(inArchive!)".contains("loading "), "the error names the item: \(inArchive!)")
    }
}

@Suite struct BoxTests {
    @Test func readItemsOutsideTheirTensorsAreRefused() throws {
        let planner = DefaultLoadPlanner()
        planner.setUp(stateDict: ["t": .tensor(.zeros(.float32, [2, 3]))], metadata: Metadata(stateDictMetadata: [:]), isCoordinator: true)
        let item = ReadItem(type: .tensor, destIndex: MetadataIndex(fqn: "t", offset: [0, 0]), destOffsets: [1, 2],
                            storageIndex: MetadataIndex(fqn: "t", offset: [0, 0]), storageOffsets: [0, 0], lengths: [1, 2])
        let error = #expect(throws: CheckpackError.self) { try planner.commitTensor(item, [UInt8](repeating: 1, count: 8)) }
        #expect(error?.kind == .invalidArgument)
    }

    @Test func shardRangesMatchTorchsEvenSharding() throws {
        // torch's Shard(0) of 9 rows over 4 ranks: 3, 3, 3, 0.
        let t = pattern(.float32, [9, 2], seed: 1)
        let sizes = try (0..<4).map { try ShardedTensor.evenShard(of: t, dimension: 0, rank: $0, worldSize: 4).chunks[0].tensor.shape[0] }
        #expect(sizes == [3, 3, 3, 0])
    }
}
