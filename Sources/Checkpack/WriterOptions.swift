#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Settings of an `ArchiveWriter`; each entry may override codec and level.
public struct WriterOptions: Sendable {
    /// The codec of every entry that names none.
    public var codec: Codec = .zstd
    /// Compression level; nil means the codec's default.
    public var level: Int32? = nil
    /// Frames are cut every `frameSize` bytes (and at item boundaries).
    public var frameSize: Int = WriterOptions.defaultFrameSize
    /// Cores used to compress frames.
    public var threads: Int = WriterOptions.availableCores
    /// Replace an existing file at the destination.
    public var overwrite = false
    /// Items given an element type (`itemTypes`, `markItemBoundary(elementType:)`)
    /// are split into byte planes (spec section 5.1), in frames of `planeFrameSize`.
    public var bytePlanes = true
    /// Frames of byte-plane items are small: plane coding gains nothing from
    /// a longer window, and a small read then decodes little.
    public var planeFrameSize = WriterOptions.defaultPlaneFrameSize
    /// Frame table pages hold 2^tableExponent rows (spec section 4.5); small
    /// values make deep tables from few frames, for tests.
    var tableExponent = Format.defaultTableExponent

    /// 4 MiB.
    public static let defaultFrameSize = 4 << 20
    /// Threads beyond this add nothing (GCD's pool is about this size) and would
    /// only let more bytes wait in flight: memory stays bounded whatever `threads` says.
    public static let maxUsefulThreads = 64
    /// 32 KiB.
    public static let defaultPlaneFrameSize = 32 << 10
    /// The cores online: the default for `threads`.
    public static var availableCores: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// Options with these settings; the others keep their defaults.
    public init(codec: Codec = .zstd, level: Int32? = nil, frameSize: Int = WriterOptions.defaultFrameSize,
                threads: Int = WriterOptions.availableCores, overwrite: Bool = false) {
        self.codec = codec
        self.level = level
        self.frameSize = frameSize
        self.threads = threads
        self.overwrite = overwrite
    }

    func validate() throws {
        for size in [frameSize, planeFrameSize] {
            guard (Format.minFrameSize...Format.maxFrameSize).contains(size) else {
                throw CheckpackError(.invalidArgument, "frame size \(size) is outside \(Format.minFrameSize)...\(Format.maxFrameSize)")
            }
        }
        guard threads >= 1 else { throw CheckpackError(.invalidArgument, "threads must be at least 1") }
        try validateLevel(level, codec: codec)
    }
}

func validateLevel(_ level: Int32?, codec: Codec) throws {
    if let level, !codec.levels.contains(level) {
        throw CheckpackError(.invalidArgument, "level \(level) is outside \(codec.levels) for \(codec)")
    }
}
