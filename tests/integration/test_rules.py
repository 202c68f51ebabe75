"""Issue #3: disks, rule profiles, tags, quotas, idempotency, status and filters, end to end."""
import json
import os
import subprocess
import time
import pytest
from conftest import BIN, DiskSnap, Loop


@pytest.fixture
def tiny(tmp_path):
    """A 64 KiB disk: snapshots of it take milliseconds."""
    path = tmp_path / "tiny.img"
    path.write_bytes(os.urandom(64 << 10))
    return str(path)


def test_disk_registry(ds, tiny, tmp_path):
    d = ds.run("disk", "add", tiny, "--name", "web-1", "--type", "system", "--instance", "vm1", "--json").json()
    assert d["DiskId"].startswith("d-") and d["DiskType"] == "system" and d["Instance"] == "vm1"
    assert d["Path"] == tiny
    for ref in (d["DiskId"], "web-1", tiny):
        assert ds.run("disk", "show", ref, "--json").json()["DiskId"] == d["DiskId"]
    dup = ds.run("disk", "add", tiny, "--name", "other", check=False)
    assert dup.code == 4 and "InvalidDiskPath.Duplicate" in dup.err
    bad = ds.run("disk", "add", tiny, "--name", "x", "--type", "swap", check=False)
    assert bad.code == 2 and "InvalidParameter.DiskType" in bad.err
    missing = ds.run("disk", "show", "d-aaaaaaaaaaaaaaaaaaaa", check=False)
    assert missing.code == 3 and "InvalidDiskId.NotFound" in missing.err
    # create accepts the id, the name and the path; snapshots carry the disk.
    snaps = [ds.create(ref, f"s{i}x") for i, ref in enumerate((d["DiskId"], "web-1", tiny))]
    for snap in snaps:
        record = ds.show(snap)
        assert record["SourceDiskId"] == d["DiskId"] and record["SourceDiskType"] == "system"
    refused = ds.run("disk", "remove", "web-1", check=False)
    assert refused.code == 4 and "DiskHasSnapshots" in refused.err
    ds.run("disk", "remove", "web-1", "--with-snapshots")
    assert ds.run("disk", "list", "--json").json() == [] and ds.run("list", "--json").json() == []


def test_unregistered_path_is_registered_on_first_create(ds, tiny):
    snap = ds.create(tiny, "first")
    disks = ds.run("disk", "list", "--json").json()
    assert len(disks) == 1 and disks[0]["Path"] == tiny and disks[0]["DiskType"] == "data"
    assert ds.show(snap)["SourceDiskId"] == disks[0]["DiskId"]
    ds.create(tiny, "second")
    assert len(ds.run("disk", "list", "--json").json()) == 1


def test_sixty_fifth_snapshot_of_a_disk_is_refused(ds, tiny, tmp_path):
    for i in range(64):
        ds.run("create", tiny, "--name", f"snap{i}")
    r = ds.run("create", tiny, "--name", "snap64", "--json", check=False)
    assert r.code == 8
    body = json.loads(r.out)
    assert body["Code"] == "QuotaExceed.Snapshot" and body["HttpStatus"] == 403 and "64" in body["Message"]
    other = tmp_path / "other.img"
    other.write_bytes(b"x" * 1000)
    ds.create(str(other), "elsewhere")  # the limit is per disk
    ds.run("delete", "snap0")
    ds.create(tiny, "snap64")  # room again


def test_simple_application_server_profile(tmp_path):
    ds = DiskSnap(str(tmp_path / "swas"))
    ds.run("init", "--profile", "swas")
    disks = []
    for i in range(2):
        p = tmp_path / f"d{i}.img"
        p.write_bytes(os.urandom(1000))
        disks.append(ds.run("disk", "add", p, "--name", f"d{i}", "--instance", "srv1", "--json").json()["DiskId"])
    for i in range(3):
        ds.create(disks[i % 2], f"s{i}")
    r = ds.run("create", disks[1], "--name", "s3", check=False)
    assert r.code == 8 and "SnapshotLimitExceed" in r.err and "srv1" in r.err
    long_name = ds.run("create", disks[0], "--name", "a" * 51, check=False)
    assert long_name.code == 2 and "InvalidSnapshotName.ValueNotSupported" in long_name.err


def test_css_profile_names_and_descriptions(tmp_path, tiny):
    ds = DiskSnap(str(tmp_path / "css"))
    ds.run("init", "--profile", "css")
    short = ds.run("create", tiny, "--name", "abc", check=False)
    assert short.code == 2 and "InvalidSnapshotName.Malformed" in short.err
    bad = ds.run("create", tiny, "--name", "snap1", "--description", "a<b", check=False)
    assert bad.code == 2 and "InvalidDescription.Malformed" in bad.err
    ds.create(tiny, "Snap1")
    dup = ds.run("create", tiny, "--name", "SNAP1", check=False)
    assert dup.code == 2 and "InvalidSnapshotName.Duplicate" in dup.err


def test_repository_cap_and_unknown_profile(tmp_path, tiny):
    ds = DiskSnap(str(tmp_path / "cap"))
    ds.run("init", "--max-snapshots", "2")
    ds.create(tiny, "one1")
    ds.create(tiny, "two2")
    r = ds.run("create", tiny, "--name", "three", check=False)
    assert r.code == 8 and "QuotaExceed.Snapshot" in r.err and "cap is 2" in r.err
    bad = DiskSnap(str(tmp_path / "bad")).run("init", "--profile", "aws", check=False)
    assert bad.code == 2 and "InvalidParameter.Profile" in bad.err


def test_tags_and_list_filters(ds, tiny, tmp_path):
    other = tmp_path / "other.img"
    other.write_bytes(os.urandom(1000))
    a = ds.create(tiny, "alpha", "--tag", "env=prod", "--tag", "team=db")
    b = ds.create(tiny, "beta", "--tag", "env=dev")
    c = ds.create(str(other), "gamma", "--tag", "keep")
    assert ds.show(a)["Tags"] == [{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "db"}]
    ids = lambda *args: [r["SnapshotId"] for r in ds.run("list", "--json", *args).json()]
    assert ids("--tag", "env") == [a, b]
    assert ids("--tag", "env=prod") == [a]
    assert ids("--tag", "env=prod", "--tag", "team=db") == [a]
    assert ids("--tag", "keep") == [c]
    assert ids("--disk", tiny) == [a, b]
    assert ids("--name", "beta") == [b]
    assert ids("--status", "accomplished") == [a, b, c]
    assert ids("--status", "failed") == []
    for bad, code in ((["--tag", "acs:x=1"], "InvalidParameter.TagKey"), (["--tag", "k=http://x"], "InvalidParameter.TagValue")):
        r = ds.run("create", tiny, "--name", "delta", *bad, check=False)
        assert r.code == 2 and code in r.err
    many = sum((["--tag", f"k{i}=v"] for i in range(21)), [])
    r = ds.run("create", tiny, "--name", "delta", *many, check=False)
    assert r.code == 2 and "InvalidParameter.TagCount" in r.err


def test_client_token_makes_create_idempotent(ds, tiny):
    first = ds.create(tiny, "tok1", "--client-token", "123e4567-e89b-12d3-a456-426655440000")
    again = ds.create(tiny, "tok1", "--client-token", "123e4567-e89b-12d3-a456-426655440000")
    assert again == first and len(ds.run("list", "--json").json()) == 1
    r = ds.run("create", tiny, "--name", "tok2", "--client-token", "123e4567-e89b-12d3-a456-426655440000", "--json", check=False)
    assert r.code == 2 and json.loads(r.out)["Code"] == "IdempotentParameterMismatch"
    long = ds.run("create", tiny, "--name", "tok3", "--client-token", "t" * 65, check=False)
    assert long.code == 2 and "InvalidClientToken.Malformed" in long.err


def test_rules_are_checked_before_any_data_is_read(ds, tmp_path):
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)  # opening it for reading would block forever
    for args, code in ((["--name", "a"], "InvalidSnapshotName.Malformed"),
                       (["--name", "ok1", "--tag", "aliyunx=1"], "InvalidParameter.TagKey")):
        r = subprocess.run([BIN, "--repo", ds.repo, "create", str(fifo)] + args, capture_output=True, text=True, timeout=20)
        assert r.returncode == 2 and code in r.stderr


def test_progress_is_visible_from_another_process(ds, tmp_path):
    image = tmp_path / "big.img"
    with open(image, "wb") as f:
        for _ in range(320):
            f.write(os.urandom(1 << 20))
    proc = subprocess.Popen([BIN, "--repo", ds.repo, "create", image, "--name", "slow"],
                            env=dict(os.environ, DISKSNAP_WORKERS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    while proc.poll() is None:
        listed = ds.run("list", "--json", check=False)
        if listed.code == 0 and listed.json():
            record = listed.json()[0]
            seen.append((record["Status"], record["Progress"]))
        time.sleep(0.05)
    assert proc.returncode == 0
    progressing = [p for s, p in seen if s == "progressing"]
    assert progressing, "a running create must be listed as progressing"
    assert any(p not in ("0%", "100%") for p in progressing), f"no intermediate progress seen: {progressing[-5:]}"
    final = ds.run("list", "--json").json()[0]
    assert final["Status"] == "accomplished" and final["Progress"] == "100%"


def test_automatic_snapshots_keep_policy_and_manual_safety(ds, tiny):
    manual = ds.create(tiny, "manual1")
    made = [ds.run("auto", tiny, "--keep", "2", "--json").json() for _ in range(3)]
    assert all(m["SnapshotName"].startswith("auto-") for m in made)
    assert made[2]["DeletedSnapshotIds"] == [made[0]["SnapshotId"]]
    listed = {r["SnapshotId"]: r for r in ds.run("list", "--json").json()}
    assert set(listed) == {manual, made[1]["SnapshotId"], made[2]["SnapshotId"]}
    assert listed[made[2]["SnapshotId"]]["Automatic"] is True and listed[manual]["Automatic"] is False
    # retention 0 days: every older automatic snapshot expires, the new one stays, manual stays.
    last = ds.run("auto", tiny, "--retention-days", "0", "--json").json()
    assert sorted(r["SnapshotId"] for r in ds.run("list", "--json").json()) == sorted([manual, last["SnapshotId"]])


def test_at_the_limit_the_oldest_automatic_snapshot_makes_room(tmp_path, tiny):
    ds = DiskSnap(str(tmp_path / "cap"))
    ds.run("init", "--max-snapshots", "3")
    manual = ds.create(tiny, "manual1")
    autos = [ds.run("auto", tiny, "--json").json()["SnapshotId"] for _ in range(2)]
    third = ds.run("auto", tiny, "--json").json()
    assert third["DeletedSnapshotIds"] == [autos[0]]
    ids = sorted(r["SnapshotId"] for r in ds.run("list", "--json").json())
    assert ids == sorted([manual, autos[1], third["SnapshotId"]])
    # A manual snapshot at the limit is never deleted: with no automatic one left, auto fails.
    ds2 = DiskSnap(str(tmp_path / "manualonly"))
    ds2.run("init", "--max-snapshots", "1")
    keep = ds2.create(tiny, "manual2")
    r = ds2.run("auto", tiny, check=False)
    assert r.code == 8 and "QuotaExceed.Snapshot" in r.err
    assert [x["SnapshotId"] for x in ds2.run("list", "--json").json()] == [keep]


def test_users_cannot_name_snapshots_auto(ds, tiny):
    for name in ("auto", "auto-1", "Auto1", "AUTOx"):
        r = ds.run("create", tiny, "--name", name, check=False)
        assert r.code == 2 and "InvalidSnapshotName.Malformed" in r.err
