import Checkpack
import CheckpackStorage

/// torch.distributed.checkpoint's `.metadata`, decoded without running any of
/// it: the storage layer's `Metadata` plus what only torch's has.
public struct TorchCheckpointMetadata: Sendable {
    public var metadata: Metadata
    /// `_StorageInfo.transform_descriptors` of each item that has them (for
    /// example `["zstd"]` from torch's ZStandard stream extension).
    public var transformDescriptors: [MetadataIndex: [String]]
    /// `Metadata.storage_meta`, when present.
    public var storageMeta: StorageMeta?
    /// `Metadata.version`, when present (older torch writes none).
    public var version: String?

    public struct StorageMeta: Sendable, Equatable {
        public var checkpointID: String?
        public var saveID: String?
        public var loadID: String?
        public var modules: [String]
    }
}

public enum TorchMetadataReader {
    static let checkpointModule = "torch.distributed.checkpoint.metadata"

    /// The globals torch's checkpoint metadata may name.
    public static let allowed: Set<PickleGlobal> = {
        var names: Set<PickleGlobal> = []
        for name in ["Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
                     "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"] {
            names.insert(PickleGlobal(module: checkpointModule, name: name))
        }
        names.insert(PickleGlobal(module: "torch.distributed.checkpoint.filesystem", name: "_StorageInfo"))
        names.insert(PickleGlobal(module: "torch", name: "Size"))
        names.insert(PickleGlobal(module: "torch.serialization", name: "_get_layout"))
        for dtype in DType.allCases { names.insert(PickleGlobal(module: "torch", name: dtype.rawValue)) }
        for name in ["PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"] {
            names.insert(PickleGlobal(module: "pathlib", name: name))
        }
        names.insert(PickleGlobal(module: "collections", name: "OrderedDict"))
        return names
    }()

    /// Decodes the bytes of a `.metadata` file.
    public static func decode(_ bytes: [UInt8]) throws -> TorchCheckpointMetadata {
        let root = try PickleReader(allowed: allowed).read(bytes)
        let state = try stateDict(of: root, expecting: "Metadata")
        var entries: [String: StorageMetadata] = [:]
        for (key, value) in try dictItems(state["state_dict_metadata"], "state_dict_metadata") {
            let fqn = try string(key, "a state_dict_metadata key")
            entries[fqn] = try storageMetadata(value, fqn)
        }
        var storage: [MetadataIndex: StorageInfo] = [:]
        var transforms: [MetadataIndex: [String]] = [:]
        for (key, value) in try dictItems(state["storage_data"] ?? .dict(PickleDict()), "storage_data") {
            let index = try metadataIndex(key)
            let info = try stateDict(of: value, expecting: "_StorageInfo")
            let stored = StorageInfo(relativePath: try string(info["relative_path"], "relative_path of \(index)"),
                                     offset: try unsigned(info["offset"], "offset of \(index)"),
                                     length: try unsigned(info["length"], "length of \(index)"))
            guard ShapeMath.range(offset: stored.offset, length: stored.length) else {
                throw fail("\(index) is stored at \(stored.offset)+\(stored.length), beyond \(ShapeMath.maxBytes) bytes")
            }
            storage[index] = stored
            if let descriptors = info["transform_descriptors"], case .list(let list) = descriptors {
                transforms[index] = try list.items.map { try string($0, "a transform descriptor of \(index)") }
            }
        }
        var version: String? = nil
        if case .string(let v)? = state["version"] { version = v }
        var metadata = Metadata(stateDictMetadata: entries, storageData: storage)
        metadata.version = version ?? "torch"
        return TorchCheckpointMetadata(metadata: metadata, transformDescriptors: transforms,
                                       storageMeta: try storageMeta(state["storage_meta"]), version: version)
    }

    // MARK: Pieces

    static func fail(_ message: String) -> CheckpackError { CheckpackError(.corrupt, "torch metadata: \(message)") }

    /// The BUILD state (a dict) of an object of the checkpoint module's class `name`.
    static func stateDict(of value: PickleValue, expecting name: String) throws -> PickleDict {
        guard case .object(let object) = value, object.type.name == name else {
            throw fail("expected a \(name), found \(describe(value))")
        }
        switch object.state {
        case .dict(let dict)?: return dict
        case .tuple(let parts)? where parts.count == 2:   // (dict state, slots state)
            if case .dict(let dict) = parts[1] { return dict }
            if case .dict(let dict) = parts[0] { return dict }
        case nil, .none?: return PickleDict()
        default: break
        }
        throw fail("\(name) has state \(describe(object.state ?? .none))")
    }

    static func dictItems(_ value: PickleValue?, _ what: String) throws -> [(key: PickleValue, value: PickleValue)] {
        guard case .dict(let dict)? = value else { throw fail("\(what) is \(value.map(describe) ?? "missing"), not a dict") }
        return dict.items
    }

    static func string(_ value: PickleValue?, _ what: String) throws -> String {
        guard case .string(let s)? = value else { throw fail("\(what) is \(value.map(describe) ?? "missing"), not a string") }
        return s
    }

    static func unsigned(_ value: PickleValue?, _ what: String) throws -> UInt64 {
        guard case .int(let n)? = value, n >= 0 else { throw fail("\(what) is \(value.map(describe) ?? "missing"), not a size") }
        return UInt64(n)
    }

    /// `torch.Size(tuple)` or a plain tuple or list of non-negative integers.
    static func sizes(_ value: PickleValue?, _ what: String) throws -> [Int] {
        var items: [PickleValue]
        switch value {
        case .object(let o)? where o.type == PickleGlobal(module: "torch", name: "Size"):
            guard o.arguments.count == 1 else { throw fail("\(what): torch.Size with \(o.arguments.count) arguments") }
            switch o.arguments[0] {
            case .tuple(let t): items = t
            case .list(let l): items = l.items
            default: throw fail("\(what): torch.Size of \(describe(o.arguments[0]))")
            }
        case .tuple(let t)?: items = t
        case .list(let l)?: items = l.items
        default: throw fail("\(what) is \(value.map(describe) ?? "missing"), not a size")
        }
        return try items.map { item in
            guard case .int(let n) = item, n >= 0, n <= Int64(Int32.max) * 1024 else { throw fail("\(what) has \(describe(item))") }
            return Int(n)
        }
    }

    static func storageMetadata(_ value: PickleValue, _ fqn: String) throws -> StorageMetadata {
        guard case .object(let object) = value else { throw fail("\"\(fqn)\" is \(describe(value))") }
        switch object.type.name {
        case "BytesStorageMetadata":
            return .bytes(BytesStorageMetadata())
        case "TensorStorageMetadata":
            let state = try stateDict(of: value, expecting: "TensorStorageMetadata")
            let size = try sizes(state["size"], "size of \"\(fqn)\"")
            guard case .list(let list)? = state["chunks"] else { throw fail("\"\(fqn)\" has no chunk list") }
            let chunks = try list.items.map { chunk -> ChunkStorageMetadata in
                let c = try stateDict(of: chunk, expecting: "ChunkStorageMetadata")
                let offsets = try sizes(c["offsets"], "a chunk offset of \"\(fqn)\""), lengths = try sizes(c["sizes"], "a chunk size of \"\(fqn)\"")
                let chunk = ChunkStorageMetadata(offsets: offsets, sizes: lengths)
                guard ShapeMath.chunk(chunk, fits: size) else {
                    throw fail("a chunk of \"\(fqn)\" at \(offsets) of \(lengths) does not fit \(size)")
                }
                return chunk
            }
            let type = try dtype(state["properties"], fqn)
            guard ShapeMath.byteCount(size, elementSize: type.elementSize) != nil else {
                throw fail("\"\(fqn)\" has size \(size), beyond \(ShapeMath.maxBytes) bytes")
            }
            return .tensor(TensorStorageMetadata(properties: TensorProperties(dtype: type), size: size, chunks: chunks))
        default:
            throw fail("\"\(fqn)\" is a \(object.type)")
        }
    }

    /// TensorProperties pickles its state as a tuple whose first item is the dtype.
    static func dtype(_ properties: PickleValue?, _ fqn: String) throws -> DType {
        guard case .object(let object)? = properties, object.type.name == "TensorProperties" else {
            throw fail("\"\(fqn)\" has no TensorProperties")
        }
        var candidate: PickleValue?
        switch object.state {
        case .tuple(let parts)?: candidate = parts.first
        case .dict(let dict)?: candidate = dict["dtype"]
        default: candidate = nil
        }
        guard case .global(let g)? = candidate, g.module == "torch", let dtype = DType(rawValue: g.name) else {
            throw fail("\"\(fqn)\" has dtype \(candidate.map(describe) ?? "missing")")
        }
        return dtype
    }

    static func metadataIndex(_ value: PickleValue) throws -> MetadataIndex {
        let state = try stateDict(of: value, expecting: "MetadataIndex")
        let fqn = try string(state["fqn"], "a MetadataIndex fqn")
        var offset: [Int]? = nil
        if let o = state["offset"], !isNone(o) { offset = try sizes(o, "offset of \(fqn)") }
        var index: Int? = nil
        if case .int(let i)? = state["index"] { index = Int(i) }
        return MetadataIndex(fqn: fqn, offset: offset, index: index)
    }

    static func storageMeta(_ value: PickleValue?) throws -> TorchCheckpointMetadata.StorageMeta? {
        guard let value, !isNone(value) else { return nil }
        let state = try stateDict(of: value, expecting: "StorageMeta")
        func text(_ key: String) -> String? {
            switch state[key] {
            case .string(let s)?: return s
            case .object(let path)? where path.type.module == "pathlib":   // PosixPath(*parts)
                let parts = path.arguments.compactMap { if case .string(let s) = $0 { return s } else { return nil } }
                guard let first = parts.first else { return nil }
                return parts.dropFirst().reduce(first) { $0.hasSuffix("/") ? $0 + $1 : $0 + "/" + $1 }
            default: return nil
            }
        }
        var modules: [String] = []
        if case .list(let list)? = state["modules"] {
            modules = list.items.compactMap { if case .string(let s) = $0 { return s } else { return nil } }
        }
        return .init(checkpointID: text("checkpoint_id"), saveID: text("save_id"), loadID: text("load_id"), modules: modules)
    }

    static func isNone(_ value: PickleValue) -> Bool {
        if case .none = value { return true }
        return false
    }

    /// A short description for error messages (never recursing deeply).
    static func describe(_ value: PickleValue) -> String {
        switch value {
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let n): return "the integer \(n)"
        case .float(let f): return "the float \(f)"
        case .string(let s): return "the string \"\(s.prefix(40))\""
        case .bytes(let b): return "\(b.count) bytes"
        case .tuple(let t): return "a tuple of \(t.count)"
        case .list(let l): return "a list of \(l.items.count)"
        case .dict(let d): return "a dict of \(d.items.count)"
        case .global(let g): return "\(g)"
        case .object(let o): return "a \(o.type)"
        }
    }
}
