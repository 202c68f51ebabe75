"""Snapshot -> restore round trips and deduplication, on real GPT/ext4 images and loop devices."""
import os
import shutil
import subprocess
from conftest import CHUNK, DiskSnap, Loop, sha256, chunk_digests, chunk_list, e2fsck_partition


def zero_chunk_bytes(path, chunk_size):
    total = 0
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            if block.count(0) == len(block):
                total += len(block)
    return total


def test_image_round_trip_is_identical_sparse_and_fsck_clean(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "first", "--description", "the test disk")
    record = ds.show(snap)
    assert record["Status"] == "accomplished"
    assert record["SourceSize"] == test_disk["disk_size"]
    assert record["SnapshotName"] == "first" and record["Description"] == "the test disk"
    assert record["BytesRead"] < test_disk["disk_size"], "holes must not be read"
    out = tmp_path / "restored.img"
    ds.run("restore", snap, out)
    assert sha256(out) == sha256(test_disk["v1"])
    st = os.stat(out)
    assert st.st_blocks * 512 < st.st_size * 0.8, "zero chunks must be restored as holes"
    e2fsck_partition(str(out), test_disk["partition_offset"], test_disk["partition_size"])
    # No temporary file is left beside the target.
    assert sorted(os.listdir(tmp_path)) == ["repo", "restored.img"]


def test_store_holds_exactly_the_distinct_chunks(ds, test_disk):
    first = ds.show(ds.create(test_disk["v1"], "v1"))
    v1 = chunk_digests(test_disk["v1"], CHUNK)
    assert first["ChunksStoredNew"] == len(v1)
    assert first["ZeroBytes"] == zero_chunk_bytes(test_disk["v1"], CHUNK)
    # Unchanged second snapshot: no new chunk data at all.
    again = ds.show(ds.create(test_disk["v1"], "v1-again"))
    assert again["BytesStoredNew"] == 0 and again["ChunksStoredNew"] == 0
    # Every data chunk was recognised at its position in the previous snapshot.
    listed1 = chunk_list(test_disk["v1"], CHUNK)
    assert first["ChunksUnchanged"] == 0
    assert again["ChunksUnchanged"] == sum(1 for d in listed1 if d is not None)
    # Changed disk: exactly the chunks not seen before.
    second = ds.show(ds.create(test_disk["v2"], "v2"))
    v2 = chunk_digests(test_disk["v2"], CHUNK)
    assert second["ChunksStoredNew"] == len(v2 - v1)
    assert second["ChunksUnchanged"] == 0, "another path is another disk: it has no previous snapshot"
    assert second["ChunksStoredNew"] * CHUNK < test_disk["disk_size"] * 0.5
    stats = ds.run("stats", "--json").json()
    assert stats["ChunkCount"] == len(v1 | v2)
    assert stats["SnapshotCount"] == 3
    assert stats["PackCount"] >= 1


def test_second_version_restores_fsck_clean(ds, test_disk, tmp_path):
    ds.create(test_disk["v1"], "v1")
    snap = ds.create(test_disk["v2"], "v2")
    out = tmp_path / "v2.img"
    ds.run("restore", "v2", out)
    assert sha256(out) == sha256(test_disk["v2"])
    e2fsck_partition(str(out), test_disk["partition_offset"], test_disk["partition_size"])
    assert ds.run("check", "--read-data").code == 0


def test_loop_device_to_loop_device(ds, test_disk, tmp_path):
    with Loop(test_disk["v1"], read_only=True) as source:
        snap = ds.create(source, "fromloop")
    record = ds.show(snap)
    assert record["SourceKind"] == "blockDevice"
    assert record["SourceSize"] == test_disk["disk_size"]
    assert record["Identity"]["PartitionTableType"] == "gpt"
    target_file = tmp_path / "target.img"
    with open(target_file, "wb") as f:
        f.write(os.urandom(1 << 20))  # stale data the restore must overwrite
        f.truncate(test_disk["disk_size"])
    with Loop(str(target_file)) as target:
        refused = ds.run("restore", snap, target, check=False)
        assert refused.code == 4 and "Target.Exists" in refused.err
        ds.run("restore", snap, target, "--force")
        subprocess.run(["sync"], check=True)
    assert sha256(target_file) == sha256(test_disk["v1"])
    e2fsck_partition(str(target_file), test_disk["partition_offset"], test_disk["partition_size"])


def test_restore_to_too_small_device_is_refused(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "big")
    small = tmp_path / "small.img"
    with open(small, "wb") as f:
        f.truncate(8 << 20)
    with Loop(str(small)) as target:
        r = ds.run("restore", snap, target, "--force", check=False)
    assert r.code == 2 and "Target.TooSmall" in r.err


def test_fully_sparse_1gib_stores_almost_nothing(ds, tmp_path):
    image = tmp_path / "sparse.img"
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    record = ds.show(ds.create(image, "empty"))
    assert record["BytesRead"] == 0 and record["BytesStoredNew"] == 0
    assert record["ZeroBytes"] == 1 << 30
    stats = ds.run("stats", "--json").json()
    assert stats["ChunkCount"] == 0
    out = tmp_path / "out.img"
    ds.run("restore", "empty", out)
    assert os.path.getsize(out) == 1 << 30 and os.stat(out).st_blocks == 0


def test_zero_chunks_with_allocated_blocks_are_not_stored(ds, tmp_path):
    image = tmp_path / "zeros.img"
    with open(image, "wb") as f:
        f.write(bytes(8 << 20))  # allocated, all zero
        f.write(os.urandom(100_000))  # a short last chunk
    record = ds.show(ds.create(image, "zeros"))
    assert record["BytesRead"] == os.path.getsize(image)
    assert record["ZeroBytes"] == 8 << 20
    assert record["ChunksStoredNew"] == len(chunk_digests(image, CHUNK)) == -(-100_000 // CHUNK)  # whole chunks + a short last one
    out = tmp_path / "out.img"
    ds.run("restore", "zeros", out)
    assert sha256(out) == sha256(image)


def test_default_repository_and_auto_init(tmp_path, test_disk):
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    env.pop("DISKSNAP_REPO", None)
    ds = DiskSnap(None)
    snap = ds.run("create", test_disk["v1"], "--name", "home1", repo=False, env=env).out.strip()
    assert snap.startswith("s-")
    assert os.path.exists(tmp_path / "home/.local/share/disksnap/config.json")
    env["DISKSNAP_REPO"] = str(tmp_path / "envrepo")
    ds.run("create", test_disk["v1"], "--name", "env1", repo=False, env=env)
    listed = ds.run("list", "--json", repo=False, env=env).json()
    assert [r["SnapshotName"] for r in listed] == ["env1"]


def test_init_settings_are_used(tmp_path, test_disk):
    ds = DiskSnap(str(tmp_path / "r1m"))
    ds.run("init", "--chunk-size", "1M", "--compression", "zstd:1")
    record = ds.show(ds.create(test_disk["v1"], "large"))
    assert record["ChunkSize"] == 1 << 20
    assert record["ChunksStoredNew"] == len(chunk_digests(test_disk["v1"], 1 << 20))
    again = ds.run("init", check=False)
    assert again.code == 4 and "Repository.AlreadyExists" in again.err
    bad = DiskSnap(str(tmp_path / "bad")).run("init", "--chunk-size", "96K", check=False)
    assert bad.code == 2 and "InvalidParameter.ChunkSize" in bad.err
    assert not os.path.exists(tmp_path / "bad" / "config.json")


def test_small_chunks_round_trip(tmp_path, test_disk):
    """16 KiB chunks (the smallest allowed): exact dedup accounting, byte-identical restore of
    the second version (in place too), a clean check."""
    ds = DiskSnap(str(tmp_path / "r16k"))
    ds.run("init", "--chunk-size", "16K")
    first = ds.show(ds.create(test_disk["v1"], "small-1"))
    assert first["ChunkSize"] == 16 << 10
    assert first["ChunksStoredNew"] == len(chunk_digests(test_disk["v1"], 16 << 10))
    image = tmp_path / "disk.img"
    shutil.copyfile(test_disk["v2"], image)
    second = ds.show(ds.create(image, "small-2"))
    assert second["ChunksStoredNew"] == len(chunk_digests(test_disk["v2"], 16 << 10) - chunk_digests(test_disk["v1"], 16 << 10))
    out = tmp_path / "out.img"
    ds.run("restore", "small-2", out)
    assert sha256(out) == sha256(test_disk["v2"])
    shutil.copyfile(test_disk["v1"], out)
    ds.run("restore", "small-2", out, "--in-place")
    assert sha256(out) == sha256(test_disk["v2"])
    assert ds.run("check", "--read-data", "--json").json()["Problems"] == []


def test_empty_and_odd_sized_sources_round_trip(ds, tmp_path):
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    odd = tmp_path / "odd.img"
    odd.write_bytes(os.urandom(1_234_567))  # not a multiple of the chunk size or of 512
    for image in (empty, odd):
        snap = ds.create(image, "e-" + image.stem)
        assert ds.show(snap)["SourceSize"] == os.path.getsize(image)
        out = tmp_path / (image.stem + ".out")
        ds.run("restore", snap, out)
        assert sha256(out) == sha256(image)
    assert ds.run("check", "--read-data").code == 0


def test_incremental_finds_unchanged_chunks_at_their_position(ds, test_disk, tmp_path):
    image = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", test_disk["v1"], image], check=True)
    ds.create(image, "v1")
    subprocess.run(["cp", "--sparse=always", test_disk["v2"], image], check=True)
    second = ds.show(ds.create(image, "v2"))
    listed1, listed2 = chunk_list(test_disk["v1"], CHUNK), chunk_list(test_disk["v2"], CHUNK)
    same = sum(1 for a, b in zip(listed1, listed2) if b is not None and a == b)
    assert same > len(listed2) // 4 and second["ChunksUnchanged"] == same
    assert second["ChunksStoredNew"] == len(set(listed2) - set(listed1) - {None})
    out = tmp_path / "out.img"
    ds.run("restore", "v2", out)
    assert sha256(out) == sha256(test_disk["v2"])


def cached_bytes(path):
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def evict(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def test_snapshot_leaves_the_page_cache_as_it_found_it(ds, test_disk, tmp_path):
    image = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", test_disk["v1"], image], check=True)
    evict(image)
    allocated = os.stat(image).st_blocks * 512
    assert cached_bytes(image) < 1 << 20
    ds.create(image, "cold")
    # What may stay: readahead that ran into holes (no run covers them) and metadata.
    assert cached_bytes(image) < allocated * 0.1, "a snapshot of a cold image must not fill the page cache with it"
    with open(image, "rb") as f:
        while f.read(1 << 20):
            pass
    warm = cached_bytes(image)
    assert warm > allocated * 0.9
    ds.create(image, "warm")
    # Every data page cached before stays (zero pages of holes may go: they cost no I/O).
    assert cached_bytes(image) >= allocated * 0.99, "pages that were cached before the snapshot stay cached"
