// Pack, unpack and size against tar + zstd and torch's ZStandard extension,
// measured alternately on the same checkpoint directory.
import Foundation

struct PeerResult {
    var name: String
    var source: UInt64
    var archive: UInt64
    var tarZstd: UInt64
    var torchZstd: UInt64?
    var pack: Double, tarPack: Double
    var unpack: Double, tarUnpack: Double
    var packRSS: Int, unpackRSS: Int
}

func comparePeers(checkpoint: String, checkpack: String, work: String, rounds: Int) throws -> PeerResult {
    var pack: [Double] = [], tarPack: [Double] = [], unpack: [Double] = [], tarUnpack: [Double] = []
    var packRSS = 0, unpackRSS = 0
    let archive = work + "/a.ckpk", tarball = work + "/a.tar.zst"
    let out = work + "/ck-out", tarOut = work + "/tar-out"
    for _ in 0..<rounds {
        for path in [archive, tarball, out, tarOut] { try? FileManager.default.removeItem(atPath: path) }
        let p = try runChild([checkpack, "pack", checkpoint, archive, "--quiet"])
        pack.append(p.seconds)
        packRSS = max(packRSS, p.peakRSSBytes)
        tarPack.append(try shell("tar -cf - -C \(quoted(checkpoint)) . | zstd -T0 -3 -q -o \(quoted(tarball))").seconds)
        let u = try runChild([checkpack, "unpack", archive, out, "--quiet"])
        unpack.append(u.seconds)
        unpackRSS = max(unpackRSS, u.peakRSSBytes)
        try FileManager.default.createDirectory(atPath: tarOut, withIntermediateDirectories: true)
        tarUnpack.append(try shell("zstd -d -q -c \(quoted(tarball)) | tar -xf - -C \(quoted(tarOut))").seconds)
    }
    // Lossless, or the numbers mean nothing.
    _ = try shell("diff -r \(quoted(checkpoint)) \(quoted(out)) >/dev/null")
    let torch = checkpoint + "-torch-zstd"
    return PeerResult(name: (checkpoint as NSString).lastPathComponent, source: treeSize(checkpoint),
                      archive: fileSize(archive), tarZstd: fileSize(tarball),
                      torchZstd: FileManager.default.fileExists(atPath: torch) ? treeSize(torch) : nil,
                      pack: median(pack), tarPack: median(tarPack), unpack: median(unpack), tarUnpack: median(tarUnpack),
                      packRSS: packRSS, unpackRSS: unpackRSS)
}

func peerTables(_ results: [PeerResult], rounds: Int) -> String {
    var size = Table(header: ["size", "source MB", "checkpack", "tar+zstd -3", "torch zstd", "/source", "/tar+zstd", "/torch zstd"])
    var speed = Table(header: ["time (median of \(rounds))", "pack s", "tar|zstd s", "ratio", "unpack s", "zstd -d|tar s", "ratio", "RSS pack MiB", "RSS unpack MiB"])
    for r in results {
        let torch = r.torchZstd
        size.rows.append([r.name, mb(r.source), mb(r.archive), mb(r.tarZstd), torch.map(mb) ?? "-",
                          f(Double(r.archive) / Double(r.source)), f(Double(r.archive) / Double(r.tarZstd)),
                          torch.map { f(Double(r.archive) / Double($0)) } ?? "-"])
        speed.rows.append([r.name, f(r.pack), f(r.tarPack), f(r.pack / r.tarPack), f(r.unpack), f(r.tarUnpack),
                           f(r.unpack / r.tarUnpack), mib(r.packRSS), mib(r.unpackRSS)])
    }
    return size.render() + "\n\n" + speed.render()
}
