// libFuzzer harness for the checkpoint metadata parsers: a safetensors
// header, this package's JSON .metadata and torch's pickled .metadata (with
// the shape and range checks after each). Built and run by fuzz/run.sh metadata;
// a crash, hang or allocation beyond -rss_limit_mb is a finding.

import Checkpack

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMetadata(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = try? SafetensorsHeader.parse({ offset, count in
        guard offset <= UInt64(bytes.count), UInt64(count) <= UInt64(bytes.count) - offset else { throw CheckpackError(.truncated, "past the end") }
        return Array(bytes[Int(offset)..<Int(offset) + count])
    }, fileSize: UInt64(bytes.count), name: "fuzz")
    _ = try? Metadata.decodeCheckpackJSON(bytes, source: "fuzz")
    _ = try? TorchMetadataReader.decode(bytes)
    return 0
}
