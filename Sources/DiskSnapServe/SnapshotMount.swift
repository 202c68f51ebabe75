import Foundation
import DiskSnapSys
import DiskSnapFormat
import DiskSnapEngine

/// A snapshot as a directory of read-only images through FUSE: `disk.img` (the whole disk)
/// and `partN.img` for each partition of the table recorded at snapshot time. Reads are
/// served from the store on demand (`SnapshotImage`), every chunk verified.
public struct SnapshotMount {
    public let image: SnapshotImage
    /// The files and the disk byte range each one shows.
    public let files: [(file: FuseFilesystem.File, range: ByteRange)]

    public init(image: SnapshotImage) {
        self.image = image
        var files = [(FuseFilesystem.File(name: "disk.img", size: image.size), ByteRange(start: 0, end: image.size))]
        for part in image.partitions {
            files.append((FuseFilesystem.File(name: "part\(part.number).img", size: part.range.count), part.range))
        }
        self.files = files
    }

    /// Mounts at `mountpoint` and serves until unmounted or interrupted.
    public func serve(at mountpoint: String, ready: @escaping @Sendable () -> Void, log: @escaping @Sendable (String) -> Void) throws {
        let image = self.image
        let ranges = files.map(\.range)
        let names = files.map(\.file.name)
        let created = ISOTime.parse(image.record.creationTime).map { Int64($0.timeIntervalSince1970) } ?? 0
        try FuseFilesystem.serve(at: mountpoint, name: "disksnap:\(image.record.snapshotId)", files: files.map(\.file),
                                 modificationTime: created, ready: ready) { index, buffer, offset in
            do {
                try image.read(into: buffer, at: ranges[index].start + offset)
                return Int32(buffer.count)
            } catch let error as any CodedError {
                log("read of \(buffer.count) bytes of \(names[index]) at \(offset) failed: \(error.code): \(error.message)")
                return -5  // EIO
            } catch {
                log("read of \(names[index]) at \(offset) failed: \(error)")
                return -5
            }
        }
    }
}
