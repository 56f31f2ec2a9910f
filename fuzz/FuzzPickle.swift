// libFuzzer harness for the pickle reader, with torch's checkpoint globals
// allowed. Built and run by fuzz/run.sh pickle.

let allowedGlobals: Set<PickleGlobal> = {
    var names: Set<PickleGlobal> = []
    for name in ["Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
                 "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"] {
        names.insert(PickleGlobal(module: "torch.distributed.checkpoint.metadata", name: name))
    }
    for name in ["Size", "float32", "bfloat16", "int64", "bool"] { names.insert(PickleGlobal(module: "torch", name: name)) }
    names.insert(PickleGlobal(module: "torch.serialization", name: "_get_layout"))
    names.insert(PickleGlobal(module: "torch.distributed.checkpoint.filesystem", name: "_StorageInfo"))
    return names
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPickle(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    _ = try? PickleReader(allowed: allowedGlobals).read(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
