#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An open directory, and what is made and removed inside it by name,
/// relative to its descriptor (the openat family). Nothing follows a
/// symbolic link and nothing resolves a path again: whoever can rename
/// entries above it (the owner of the destination's parent, say) cannot
/// redirect what is written into it, nor what is removed.
final class Directory {
    let descriptor: Int32
    /// For messages only.
    let path: String

    private init(descriptor: Int32, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    deinit { _ = close(descriptor) }

    /// Opens `path`, which must be a directory and not a symbolic link.
    static func open(_ path: String) throws -> Directory {
        let fd = retrying { Glibc.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard fd >= 0 else { throw CheckpackError.system("cannot open directory", path: path) }
        return Directory(descriptor: fd, path: path)
    }

    /// Opens the child directory `name` (one component), never through a symbolic link.
    func child(_ name: String) throws -> Directory {
        let fd = retrying { openat(descriptor, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard fd >= 0 else { throw CheckpackError.system("cannot open directory", path: path + "/" + name) }
        return Directory(descriptor: fd, path: path + "/" + name)
    }

    /// Makes the child directory `name`; true if made, false if a directory was already there.
    @discardableResult
    func makeChild(_ name: String, mode: mode_t) throws -> Bool {
        if mkdirat(descriptor, name, mode) == 0 { return true }
        let code = errno
        var info = stat()
        if code == EEXIST, fstatat(descriptor, name, &info, AT_SYMLINK_NOFOLLOW) == 0, (info.st_mode & S_IFMT) == S_IFDIR { return false }
        throw CheckpackError.system("cannot create directory", path: path + "/" + name, errno: code)
    }

    /// Creates the new file `name` for writing; fails if anything is there already.
    func createFile(_ name: String) throws -> SystemFile {
        let fd = retrying { openat(descriptor, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
        guard fd >= 0 else { throw CheckpackError.system("cannot create file", path: path + "/" + name) }
        return SystemFile(descriptor: fd, path: path + "/" + name)
    }

    func setMode(_ mode: mode_t) throws {
        guard fchmod(descriptor, mode) == 0 else { throw CheckpackError.system("cannot set mode", path: path) }
    }

    func sync() throws {
        guard retrying({ fsync(descriptor) }) == 0 else { throw CheckpackError.system("fsync failed", path: path) }
    }

    /// Removes everything inside, depth first, without following symbolic
    /// links (a link is removed, never what it points to). Best effort.
    func removeContents() {
        _ = fchmod(descriptor, 0o700)   // a read-only directory cannot be emptied
        let copy = dup(descriptor)
        guard copy >= 0, let stream = fdopendir(copy) else {
            if copy >= 0 { _ = close(copy) }
            return
        }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        for name in names {
            if unlinkat(descriptor, name, 0) == 0 { continue }
            guard errno == EISDIR, let child = try? child(name) else { continue }
            child.removeContents()
            _ = unlinkat(descriptor, name, AT_REMOVEDIR)
        }
    }
}
