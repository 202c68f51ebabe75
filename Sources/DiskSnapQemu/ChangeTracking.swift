/// What the disk's previous snapshot left for change tracking (from its record).
public struct TrackingBase: Sendable, Equatable {
    public var snapshotID: String
    /// The bitmap it left in the image; nil when it was not taken through QEMU.
    public var bitmap: String?
    public var granularity: UInt64?
    public var diskSize: UInt64

    public init(snapshotID: String, bitmap: String?, granularity: UInt64?, diskSize: UInt64) {
        self.snapshotID = snapshotID
        self.bitmap = bitmap
        self.granularity = granularity
        self.diskSize = diskSize
    }
}

/// How the next snapshot reads the disk.
public enum TrackingPlan: Sendable, Equatable {
    /// Only what `bitmap` marks; every other chunk is the previous snapshot's.
    case incremental(bitmap: String)
    /// Everything (still through the point-in-time view), and why.
    case full(reason: String)
}

/// The bitmap life cycle's decisions, apart from QEMU (docs/DESIGN.md, "Change tracking").
/// Bitmap names: `disksnap-<repository id>-<snapshot id>` for the persistent bitmap a
/// snapshot leaves; `disksnap-tmp-<snapshot id>` for the frozen copy a run reads.
public enum ChangeTracking {
    public static func bitmapName(repositoryID: String, snapshotID: String) -> String { "disksnap-\(repositoryID)-\(snapshotID)" }
    public static func temporaryBitmapName(snapshotID: String) -> String { "disksnap-tmp-\(snapshotID)" }

    /// Whether the previous snapshot's bitmap can stand for "what changed since it".
    public static func plan(base: TrackingBase?, bitmaps: [QemuBitmap], diskSize: UInt64, chunkSize: UInt64) -> TrackingPlan {
        guard let base else { return .full(reason: "the disk has no earlier accomplished snapshot") }
        guard let name = base.bitmap else {
            return .full(reason: "the previous snapshot \(base.snapshotID) was not taken with QEMU change tracking")
        }
        guard base.diskSize == diskSize else {
            return .full(reason: "the disk's size changed from \(base.diskSize) to \(diskSize) bytes since \(base.snapshotID)")
        }
        guard let bitmap = bitmaps.first(where: { $0.name == name }) else {
            return .full(reason: "the bitmap \(name) that \(base.snapshotID) left is not in the image (QEMU was killed or restarted without it, or it was removed)")
        }
        if bitmap.inconsistent {
            return .full(reason: "the bitmap \(name) is inconsistent (QEMU did not close the image cleanly while it recorded)")
        }
        // A bitmap that is not persistent (a raw image cannot store one) is as good while it
        // exists: it lives exactly as long as the QEMU process that has recorded since.
        guard bitmap.recording, !bitmap.busy else {
            return .full(reason: "the bitmap \(name) is \(!bitmap.recording ? "not recording" : "in use by another job")")
        }
        guard bitmap.granularity == (base.granularity ?? 0), bitmap.granularity > 0, chunkSize % bitmap.granularity == 0 else {
            return .full(reason: "the bitmap \(name) has granularity \(bitmap.granularity), not the \(base.granularity ?? 0) it was made with")
        }
        return .incremental(bitmap: name)
    }

    /// Bitmaps of ours that nothing will use: temporary ones (from runs that were killed)
    /// and this repository's persistent ones other than `keep`.
    public static func stale(bitmaps: [QemuBitmap], repositoryID: String, keep: String?) -> [String] {
        bitmaps.map(\.name).filter { name in
            name != keep && (name.hasPrefix("disksnap-tmp-") || name.hasPrefix("disksnap-\(repositoryID)-"))
        }
    }
}
