import CheckpackTestSupport
import CCRC32C
import Checkpack
import Testing

@Suite struct CRC32CTests {
    @Test func rfc3720CheckValue() {
        let bytes = Array("123456789".utf8)
        #expect(CRC32C.checksum(bytes) == 0xE306_9283)
        #expect(bytes.withUnsafeBytes { ckpk_crc32c_update_portable(0, $0.baseAddress, $0.count) } == 0xE306_9283)
    }

    @Test func rfc3720ZeroesAndOnes() {
        // RFC 3720 B.4: 32 bytes of zeroes and of 0xFF.
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
    }

    @Test func hardwareMatchesPortableOnRandomBuffers() {
        var rng = SplitMix(seed: 7)
        for length in [0, 1, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4096, 65_537] {
            for offset in 0..<8 {
                let bytes = (0..<(length + offset)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let slice = bytes[offset...]
                let fast = CRC32C.checksum(slice)
                let portable = slice.withUnsafeBytes { ckpk_crc32c_update_portable(0, $0.baseAddress, $0.count) }
                #expect(fast == portable, "length \(length) offset \(offset)")
            }
        }
    }

    @Test func chainingEqualsOnePass() {
        let bytes = sampleBytes(10_000, seed: 3, compressible: false)
        let whole = CRC32C.checksum(bytes)
        for cut in [0, 1, 4999, 9999, 10_000] {
            let first = CRC32C.checksum(bytes[..<cut])
            #expect(CRC32C.checksum(bytes[cut...], continuing: first) == whole)
        }
    }

    @Test func combineEqualsOnePass() {
        let bytes = sampleBytes(70_000, seed: 5, compressible: false)
        let whole = CRC32C.checksum(bytes)
        for cut in [0, 1, 7, 8, 4096, 65_536, 69_999, 70_000] {
            let a = CRC32C.checksum(bytes[..<cut]), b = CRC32C.checksum(bytes[cut...])
            #expect(CRC32C.combine(a, b, length: UInt64(70_000 - cut)) == whole, "cut \(cut)")
        }
    }

    @Test func reportsHardwareOnThisCPU() {
        #if arch(x86_64) || arch(arm64)
        // Every x86-64 server of the last decade has SSE4.2; report rather than fail if not.
        if !CRC32C.usesHardware { Issue.record("CRC32C runs without a hardware instruction on this CPU") }
        #endif
    }
}
