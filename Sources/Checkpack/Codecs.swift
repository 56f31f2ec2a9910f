import CBytePlanes
import CZlib
import CZstd
#if canImport(Glibc)
import Glibc
#endif

// The codecs' names and levels, as users give them (not wire format: Format.swift has the ids).
extension Codec {
    public var description: String {
        switch self {
        case .stored: return "none"
        case .zstd: return "zstd"
        case .zlib: return "zlib"
        }
    }

    /// Parses the CLI spelling: `zstd`, `zlib`, `none` (or `stored`).
    public init?(name: String) {
        switch name.lowercased() {
        case "zstd": self = .zstd
        case "zlib": self = .zlib
        case "none", "stored": self = .stored
        default: return nil
        }
    }

    /// The level used when none is given: 3 for zstd, 6 for zlib.
    public var defaultLevel: Int32 {
        switch self {
        case .stored: return 0
        case .zstd: return 3
        case .zlib: return 6
        }
    }

    /// The levels the codec accepts.
    public var levels: ClosedRange<Int32> {
        switch self {
        case .stored: return 0...0
        case .zstd: return -7...22
        case .zlib: return 0...9
        }
    }
}

/// Compression and decompression of one frame's bytes.
enum FrameCodec {
    /// Compresses `input`, or returns nil when the result would not be smaller
    /// (the format then stores the frame as it is).
    /// `literalsOnly` (zstd) codes literals alone, without matches (see BytePlanes).
    static func compress(_ input: UnsafeRawBufferPointer, codec: Codec, level: Int32, literalsOnly: Bool = false) throws -> [UInt8]? {
        guard input.count > 1 else { return nil }
        var written: Int? = nil
        let out = try [UInt8](unsafeUninitializedCapacity: input.count - 1) { buffer, count in
            written = try compress(input, into: UnsafeMutableRawBufferPointer(buffer), codec: codec, level: level, literalsOnly: literalsOnly)
            count = written ?? 0
        }
        return written == nil ? nil : out
    }

    /// Compresses `input` into `output`: the bytes written, or nil when the
    /// result would not fit there.
    static func compress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, codec: Codec, level: Int32,
                         literalsOnly: Bool = false) throws -> Int? {
        guard !input.isEmpty, !output.isEmpty else { return nil }
        switch codec {
        case .stored:
            return nil
        case .zstd:
            return try ZstdContexts.compression.with { cctx in
                ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters)
                ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level)
                // A frame is independent: let matches reach back across all of it
                // (level 3 alone would stop at 2 MiB). No window beyond the frame helps.
                let spanning = Int32(Int.bitWidth - (input.count - 1).leadingZeroBitCount)
                ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, min(max(spanning, 10), 27))
                let literals = literalsOnly ? ckpk_zstd_literals_only(UnsafeMutableRawPointer(cctx)) : 0
                // Not the caller's fault (exit 1, not 2); zstd names the cause.
                if ZSTD_isError(literals) != 0 {
                    throw CheckpackError(.io(EIO), "zstd compression failed: \(String(cString: ZSTD_getErrorName(literals)))")
                }
                let n = ZSTD_compress2(cctx, output.baseAddress, output.count, input.baseAddress, input.count)
                guard ZSTD_isError(n) != 0 else { return n }
                // "Destination buffer is too small" means it does not fit.
                guard ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall else {
                    throw CheckpackError(.io(EIO), "zstd compression failed: \(String(cString: ZSTD_getErrorName(n)))")
                }
                return nil
            }
        case .zlib:
            var length = uLongf(output.count)
            let status = compress2(output.baseAddress?.assumingMemoryBound(to: Bytef.self), &length,
                                   input.baseAddress?.assumingMemoryBound(to: Bytef.self), uLong(input.count), level)
            if status == Z_BUF_ERROR { return nil }
            guard status == Z_OK else { throw CheckpackError(.io(status == Z_MEM_ERROR ? ENOMEM : EIO), "zlib compression failed (\(status))") }
            return Int(length)
        }
    }

    /// Decodes a frame's stored bytes, undoing its transform, into exactly
    /// `output.count` bytes (the frame's decoded length).
    static func decode(_ stored: UnsafeRawBufferPointer, header: FrameHeader, into output: UnsafeMutableRawBufferPointer) throws {
        if header.transform == BytePlanes.transformID {
            try BytePlanes.decode(stored, parameter: header.transformParameter, codec: header.codec, into: output)
        } else {
            try decompress(stored, codec: header.codec, into: output)
        }
    }

    /// Decodes `stored` into exactly `output.count` bytes. Any other outcome
    /// (more or less output, trailing input, a malformed stream) is `corrupt`.
    static func decompress(_ stored: UnsafeRawBufferPointer, codec: Codec, into output: UnsafeMutableRawBufferPointer) throws {
        switch codec {
        case .stored:
            guard stored.count == output.count else { throw CheckpackError(.corrupt, "stored frame length mismatch") }
            output.copyMemory(from: stored)
        case .zstd:
            let frameSize = ZSTD_findFrameCompressedSize(stored.baseAddress, stored.count)
            guard ZSTD_isError(frameSize) == 0, frameSize == stored.count else {
                throw CheckpackError(.corrupt, "stored bytes are not exactly one zstd frame")
            }
            let declared = ZSTD_getFrameContentSize(stored.baseAddress, stored.count)
            if declared != ZSTD_CONTENTSIZE_UNKNOWN, declared != UInt64(output.count) {
                throw CheckpackError(.corrupt, "zstd frame declares \(declared) bytes, the frame header says \(output.count)")
            }
            let n = try ZstdContexts.decompression.with { dctx in
                ZSTD_decompressDCtx(dctx, output.baseAddress, output.count, stored.baseAddress, stored.count)
            }
            if ZSTD_isError(n) != 0 {
                throw CheckpackError(.corrupt, "zstd: \(String(cString: ZSTD_getErrorName(n)))")
            }
            guard n == output.count else { throw CheckpackError(.corrupt, "zstd frame decodes to \(n) bytes, expected \(output.count)") }
        case .zlib:
            var outLength = uLongf(output.count)
            var inLength = uLong(stored.count)
            let status = uncompress2(output.baseAddress?.assumingMemoryBound(to: Bytef.self), &outLength,
                                     stored.baseAddress?.assumingMemoryBound(to: Bytef.self), &inLength)
            guard status == Z_OK else {
                let reason = status == Z_BUF_ERROR ? "stream is longer or shorter than the frame says" : "malformed stream (\(status))"
                throw CheckpackError(.corrupt, "zlib: \(reason)")
            }
            guard outLength == uLongf(output.count), inLength == uLong(stored.count) else {
                throw CheckpackError(.corrupt, "zlib stream decodes to \(outLength) bytes from \(inLength), expected \(output.count) from \(stored.count)")
            }
        }
    }
}

/// Reusable zstd contexts: making one per frame would cost more than
/// compressing a small frame.
final class ZstdContexts: Sendable {
    private struct Context: @unchecked Sendable { let pointer: OpaquePointer }
    private let free = Locked<[Context]>([])
    private let make: @Sendable () -> OpaquePointer?

    private init(make: @escaping @Sendable () -> OpaquePointer?) { self.make = make }

    static let compression = ZstdContexts { ZSTD_createCCtx() }
    static let decompression = ZstdContexts { ZSTD_createDCtx() }

    func with<R>(_ body: (OpaquePointer) throws -> R) throws -> R {
        let context = free.withLock { $0.popLast() } ?? make().map(Context.init)
        guard let context else { throw CheckpackError(.io(ENOMEM), "cannot allocate a zstd context") }
        defer { free.withLock { $0.append(context) } }
        return try body(context.pointer)
    }
}
