"""delete, gc and prune: space comes back, and nothing a snapshot needs is ever removed."""
import os
import shutil
import json
import signal
import subprocess
import threading
import time

from conftest import BIN, sha256


def store_files(repo):
    out = {}
    for sub in ("packs", "index", "fixed", "snapshots"):
        d = os.path.join(repo, sub)
        out[sub] = sorted(os.listdir(d))
    return out


def data_bytes(repo):
    return sum(os.path.getsize(os.path.join(d, f)) for sub in ("packs", "index", "fixed")
               for d in [os.path.join(repo, sub)] for f in os.listdir(d))


def restores_identically(ds, snap, expected, tmp_path):
    out = tmp_path / f"r-{snap}.img"
    ds.run("restore", snap, out, "--force")
    assert sha256(out) == sha256(expected), f"{snap} does not restore to {expected}"
    out.unlink()


def start_paused(ds, tmp_path, point, *args, env=None, also=None):
    """A disksnap command held at a TestHooks pause point; returns (process, release file).
    `ds` is anything with a `repo`; `env` the environment (default: this one); `also`
    more pause points ("POINT:PATH,...") that the test releases itself."""
    release = tmp_path / f"release-{point}"
    env = dict(env or os.environ, DISKSNAP_TEST_PAUSE=f"{point}:{release}" + (f",{also}" if also else ""))
    proc = subprocess.Popen([BIN, "--repo", ds.repo, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(f"{release}.reached"):
        assert proc.poll() is None, f"{args} ended before {point}: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc, release


def test_delete_and_gc_of_everything_returns_the_space(ds, test_disk, tmp_path):
    a = ds.create(test_disk["v1"], "first")
    b = ds.create(test_disk["v2"], "second")
    assert data_bytes(ds.repo) > 10 << 20
    before = store_files(ds.repo)
    dry = ds.run("gc", "--dry-run", "--json").json()
    assert dry["PacksCondemned"] == 0 and store_files(ds.repo) == before, "nothing is garbage yet"

    r = ds.run("delete", a, b, "--json").json()
    assert r["Deleted"] == [a, b]
    dry = ds.run("gc", "--dry-run", "--json").json()
    assert dry["DryRun"] and dry["PacksCondemned"] == len(before["packs"]) and dry["LiveBytesToCopy"] == 0
    assert store_files(ds.repo)["packs"] == before["packs"], "a dry run removes nothing"

    g = ds.run("gc", "--json").json()
    assert g["PacksRemoved"] == len(before["packs"]) and g.get("Deferred") is None and g["BytesFreed"] > 10 << 20
    assert data_bytes(ds.repo) == 0
    assert store_files(ds.repo) == {"packs": [], "index": [], "fixed": [], "snapshots": []}
    assert not os.path.exists(os.path.join(ds.repo, "gc.json"))
    assert ds.run("check", "--read-data").code == 0
    # The repository works on: a new snapshot stores everything again and restores.
    c = ds.create(test_disk["v1"], "again")
    restores_identically(ds, c, test_disk["v1"], tmp_path)


def test_gc_keeps_every_remaining_snapshot_whole(ds, test_disk, tmp_path):
    a = ds.create(test_disk["v1"], "first")
    b = ds.create(test_disk["v2"], "second")
    size_both = data_bytes(ds.repo)
    ds.run("delete", a)
    # Threshold 1: every pack holding any dead chunk is rewritten (which packs fall under
    # the default 0.8 depends on how the two workers split the chunks).
    g = ds.run("gc", "--live-threshold", "1", "--json").json()
    assert g["PacksCondemned"] >= 1 and g["PacksRemoved"] == g["PacksCondemned"]
    assert g["ChunksCopied"] > 0, "live chunks of rewritten packs are copied"
    assert data_bytes(ds.repo) < size_both
    check = ds.run("check", "--read-data", "--json").json()
    assert check["Problems"] == []
    restores_identically(ds, b, test_disk["v2"], tmp_path)
    # A second gc finds nothing more to do.
    again = ds.run("gc", "--json").json()
    assert again["PacksCondemned"] == 0 and again["PacksRemoved"] == 0


def test_gc_never_removes_what_a_running_create_relies_on(ds, test_disk, tmp_path):
    """B starts while A exists and dedups against A's chunks; A is deleted and gc runs while
    B is still being created. Without gc's wait, B would reference removed chunks."""
    image = tmp_path / "disk.img"
    shutil.copyfile(test_disk["v1"], image)
    a = ds.create(image, "snap-a")
    proc, release = start_paused(ds, tmp_path, "create-after-index", "create", test_disk["v1"], "--name", "snap-b", "--json")
    ds.run("delete", a)
    g = ds.run("gc", "--json").json()
    assert g["PacksCondemned"] >= 1 and g["PacksRemoved"] == 0
    assert "waiting for the creation" in g["Deferred"]
    again = ds.run("gc", "--json").json()
    assert again["PacksRemoved"] == 0 and "waiting" in again["Deferred"], "still running: still waiting"
    release.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    b = json.loads(out)["SnapshotId"]
    assert ds.show(b)["BytesStoredNew"] == 0, "b stored nothing: it relied on a's chunks"
    final = ds.run("gc", "--json").json()
    assert final.get("Deferred") is None
    assert ds.run("check", "--read-data", "--json").json()["Problems"] == []
    restores_identically(ds, b, test_disk["v1"], tmp_path)


def test_a_creation_lock_gc_cannot_probe_stops_the_sweep(ds, test_disk, tmp_path):
    """The running create's lock file is replaced by something gc cannot open (a directory:
    EISDIR, as EMFILE or EACCES would be). gc must not read that as "the create ended" and
    sweep the packs the create relies on: it stops with Repository.LockUnknown, removes
    nothing, and the create finishes and restores."""
    image = tmp_path / "disk.img"
    shutil.copyfile(test_disk["v1"], image)
    a = ds.create(image, "snap-a")
    proc, release = start_paused(ds, tmp_path, "create-after-index", "create", test_disk["v1"], "--name", "snap-b", "--json")
    locks = os.path.join(ds.repo, "locks")
    [name] = [n for n in os.listdir(locks) if n.startswith("create-")]
    held = os.path.join(locks, name)
    os.rename(held, held + ".moved")  # the create keeps its flock on the moved file
    os.mkdir(held)
    ds.run("delete", a)
    packs = sorted(os.listdir(os.path.join(ds.repo, "packs")))
    for attempt in range(2):  # the condemning run, then a run over the pending generation
        g = ds.run("gc", "--json", check=False)
        assert g.code == 5, f"gc must stop (busy), got {g.code}: {g.out} {g.err}"
        assert g.json()["Code"] == "Repository.LockUnknown" and name in g.json()["Message"]
        assert sorted(os.listdir(os.path.join(ds.repo, "packs"))) == packs, "nothing is swept"
    # delete refuses too, and list still shows the creation as progressing, not failed
    listed = {r["SnapshotId"]: r for r in ds.run("list", "--json").json()}
    [b_id] = [i for i, r in listed.items() if r["SnapshotName"] == "snap-b"]
    assert listed[b_id]["Status"] == "progressing"
    refused = ds.run("delete", b_id, "--json", check=False)
    assert refused.code == 5 and refused.json()["Code"] == "Repository.LockUnknown"
    os.rmdir(held)
    os.rename(held + ".moved", held)
    release.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    b = json.loads(out)["SnapshotId"]
    assert ds.show(b)["BytesStoredNew"] == 0, "b relied on a's chunks"
    assert ds.run("gc", "--json").json().get("Deferred") is None
    assert ds.run("check", "--read-data", "--json").json()["Problems"] == []
    restores_identically(ds, b, test_disk["v1"], tmp_path)


def test_a_create_that_starts_after_condemnation_stores_its_own_copies(ds, test_disk, tmp_path):
    a = ds.create(test_disk["v1"], "snap-a")
    other = tmp_path / "other.img"
    with open(other, "wb") as f:
        f.write(os.urandom(1 << 20))
    # A create of another disk holds the condemnation open.
    proc, release = start_paused(ds, tmp_path, "create-after-index", "create", other, "--name", "holder")
    ds.run("delete", a)
    g = ds.run("gc", "--json").json()
    assert g["PacksCondemned"] >= 1 and g["PacksRemoved"] == 0
    # b has the same content as the deleted a: the condemned chunks must not be reused.
    b = ds.run("create", test_disk["v1"], "--name", "snap-b", "--json").json()
    assert ds.show(b["SnapshotId"])["BytesStoredNew"] > 0
    release.touch()
    assert proc.wait(timeout=120) == 0
    final = ds.run("gc", "--json").json()
    assert final["PacksRemoved"] >= g["PacksCondemned"]
    assert ds.run("check", "--read-data", "--json").json()["Problems"] == []
    restores_identically(ds, b["SnapshotId"], test_disk["v1"], tmp_path)


def test_gc_leaves_packs_while_a_reader_holds_them(ds, test_disk, tmp_path):
    a = ds.create(test_disk["v1"], "snap-a")
    b = ds.create(test_disk["v2"], "snap-b")
    sock = tmp_path / "nbd.sock"
    server = subprocess.Popen([BIN, "--repo", ds.repo, "export", b, "--socket", sock],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline()
        ds.run("delete", a)
        g = ds.run("gc", "--live-threshold", "1", "--json").json()
        assert g["PacksRemoved"] == 0 and "reading" in g["Deferred"]
        out = tmp_path / "served.img"
        subprocess.run(["nbdcopy", f"nbd+unix:///?socket={sock}", str(out)], check=True)
        assert sha256(out) == sha256(test_disk["v2"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    g = ds.run("gc", "--json").json()
    assert g["PacksRemoved"] >= 1 and g.get("Deferred") is None
    assert ds.run("check", "--read-data", "--json").json()["Problems"] == []
    restores_identically(ds, b, test_disk["v2"], tmp_path)


def test_gc_killed_after_condemning_is_finished_by_the_next(ds, test_disk, tmp_path):
    a = ds.create(test_disk["v1"], "snap-a")
    b = ds.create(test_disk["v2"], "snap-b")
    ds.run("delete", a)
    proc, release = start_paused(ds, tmp_path, "gc-after-condemn", "gc", "--live-threshold", "1")
    assert os.path.exists(os.path.join(ds.repo, "gc.json"))
    busy = ds.run("gc", check=False)
    assert busy.code == 5 and "Repository.GCRunning" in busy.err, "one gc at a time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Writers honour the dead gc's condemnation until the next gc sweeps it.
    assert "condemned" in ds.run("check").out
    g = ds.run("gc", "--json").json()
    assert g["PacksRemoved"] >= 1 and not os.path.exists(os.path.join(ds.repo, "gc.json"))
    assert ds.run("check", "--read-data", "--json").json()["Problems"] == []
    restores_identically(ds, b, test_disk["v2"], tmp_path)


def test_creates_deletes_and_gc_interleaved(ds, tmp_path):
    """Two disks snapshotted in parallel threads while the main thread deletes and collects,
    many times: every accomplished snapshot stays restorable."""
    disks = []
    for i in range(2):
        path = tmp_path / f"d{i}.img"
        with open(path, "wb") as f:
            f.write(os.urandom(3 << 20))
            f.write(bytes(1 << 20))
        disks.append(path)
    versions = {}
    errors = []
    ds.run("init")

    def writer(i):
        try:
            for round_ in range(6):
                with open(disks[i], "r+b") as f:  # change a little, keep most: dedup across rounds
                    f.seek((round_ * 256) << 10)
                    f.write(os.urandom(64 << 10))
                content = disks[i].read_bytes()
                r = ds.run("create", disks[i], "--name", f"d{i}-r{round_}", "--json", check=False)
                if r.code == 0:
                    versions[r.json()["SnapshotId"]] = content
                elif "IncorrectDiskStatus" not in r.err:
                    errors.append(r.err)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        listed = ds.run("list", "--json").json()
        accomplished = [s["SnapshotId"] for s in listed if s["Status"] == "accomplished"]
        if len(accomplished) > 4:
            ds.run("delete", accomplished[0])
            versions.pop(accomplished[0], None)
        r = ds.run("gc", "--json", check=False)
        assert r.code in (0, 5), r.err
    for t in threads:
        t.join()
    assert errors == []
    ds.run("gc")
    ds.run("gc")
    assert ds.run("check", "--read-data", "--json").json()["Problems"] == []
    listed = {s["SnapshotId"] for s in ds.run("list", "--json").json() if s["Status"] == "accomplished"}
    assert listed and listed <= set(versions)
    for snap in listed:
        out = tmp_path / "out.img"
        ds.run("restore", snap, out, "--force")
        assert out.read_bytes() == versions[snap], f"{snap} changed"


def test_prune_plans_then_deletes(ds, tmp_path):
    image = tmp_path / "p.img"
    ids = []
    for i in range(5):
        image.write_bytes(os.urandom(64 << 10) * 2)
        ids.append(ds.create(image, f"p{i}"))
    dry = ds.run("prune", "--keep-last", "2", "--dry-run", "--json").json()
    assert dry["DryRun"] and dry["Deleted"] == []
    assert [p["SnapshotId"] for p in dry["Plan"] if p["Keep"]] == [ids[4], ids[3]]
    assert [p["Reasons"] for p in dry["Plan"] if p["Keep"]] == [["last 1"], ["last 2"]]
    assert len(ds.run("list", "--json").json()) == 5, "a dry run deletes nothing"
    daily = ds.run("prune", "--keep-daily", "1", "--dry-run", "--json").json()
    assert [p["SnapshotId"] for p in daily["Plan"] if p["Keep"]] == [ids[4]], "all were made today"
    r = ds.run("prune", "--keep-last", "2", "--json").json()
    assert sorted(r["Deleted"]) == sorted(ids[:3])
    assert sorted(s["SnapshotId"] for s in ds.run("list", "--json").json()) == sorted(ids[3:])
    bad = ds.run("prune", check=False)
    assert bad.code == 64 and "must keep something" in bad.err
    g = ds.run("gc", "--json").json()
    assert g["PacksRemoved"] >= 1
    out = tmp_path / "o.img"
    ds.run("restore", ids[4], out)
    assert out.read_bytes() == image.read_bytes()
