"""Encrypted repositories (issue 17): what a holder of the repository's files can and cannot
read, what a flipped byte does, and the keys that open it. The disk is a real ext4 image
(`mkfs.ext4 -d`) holding a marker string; an unencrypted repository of the same disk is the
control that shows each search would find what it looks for."""
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from conftest import BIN, CHUNK, DiskSnap, sha256
from test_failures import flip_byte

MARKER = b"DISKSNAP-MARKER-7f3a9c1e-in-the-guest"
SECRET_NAME = "payroll-db-snapshot-name"
SECRET_TAG = "customer-acme-tag-value"
PASSWORD = "correct horse battery staple"


class Encrypted(DiskSnap):
    """`disksnap` with a passphrase in the environment (unless `env` replaces it)."""

    def __init__(self, repo, password=PASSWORD):
        super().__init__(repo)
        self.env = dict(os.environ, DISKSNAP_PASSWORD=password)

    def run(self, *args, env=None, check=True, repo=True):
        return super().run(*args, env=env if env is not None else self.env, check=check, repo=repo)


def files_under(root):
    for directory, _, names in os.walk(root):
        for name in names:
            yield os.path.join(directory, name)


def holders(root, needles):
    """Files under `root` that contain any of `needles`."""
    found = []
    for path in files_under(root):
        with open(path, "rb") as f:
            data = f.read()
        if any(n in data for n in needles):
            found.append(os.path.relpath(path, root))
    return found


def tree_state(root):
    return {os.path.relpath(p, root): sha256(p) for p in files_under(root)}


@pytest.fixture(scope="module")
def marked_disk(tmp_path_factory):
    """A 32 MiB ext4 image whose files hold the marker (compressible text and random data)."""
    out = tmp_path_factory.mktemp("marked")
    content = out / "content"
    content.mkdir()
    for i in range(40):
        (content / f"note-{i}.txt").write_bytes((MARKER + b" line %d\n" % i) * 200)
        (content / f"blob-{i}.bin").write_bytes(os.urandom(60_000) + MARKER)
    image = out / "disk.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image)], check=True)
    return str(image)


def chunk_shas(image):
    """The SHA-256 of each non-zero chunk of the image, raw and as hex."""
    zero = bytes(CHUNK)
    digests = set()
    with open(image, "rb") as f:
        while block := f.read(CHUNK):
            if block != zero[:len(block)]:
                d = hashlib.sha256(block)
                digests.add(d.digest())
                digests.add(d.hexdigest().encode())
    return digests


def populate(ds, image, tmp_path):
    """Two snapshots (the second after the guest changed a file) with a secret name and tag,
    one deleted and collected, so that every kind of repository file exists."""
    ds.run("create", image, "--name", SECRET_NAME, "--description", "the secret description", "--tag", f"owner={SECRET_TAG}")
    changed = tmp_path / "changed.img"
    shutil.copy(image, changed)
    with open(changed, "r+b") as f:
        f.seek(20 << 20)
        f.write(os.urandom(1 << 20))
    ds.run("create", changed, "--name", "second")
    ds.run("create", image, "--name", "third")
    ds.run("delete", "third")
    ds.run("gc")
    return changed


def test_an_encrypted_repository_holds_no_disk_byte_no_chunk_sha_and_no_name(marked_disk, tmp_path):
    plain = DiskSnap(str(tmp_path / "plain"))
    plain.run("init")
    enc = Encrypted(str(tmp_path / "enc"))
    out = enc.run("init", "--encryption", "aes-256-gcm")
    assert "encrypted" in out.out
    populate(plain, marked_disk, tmp_path)
    changed = populate(enc, marked_disk, tmp_path)

    needles = [MARKER, SECRET_NAME.encode(), SECRET_TAG.encode(), b"the secret description"]
    # The control: each needle is found in the unencrypted repository (the marker in its packs,
    # the name and tag in its records), so the search below is one that can succeed.
    found = holders(plain.repo, needles)
    assert any(p.startswith("packs/") for p in found) and any(p.startswith("snapshots/") for p in found)
    assert holders(enc.repo, needles) == []
    shas = chunk_shas(marked_disk) | chunk_shas(str(changed))
    assert holders(plain.repo, shas), "the plain repository names chunks by their SHA-256"
    assert holders(enc.repo, shas) == []
    # A gc between condemning packs and removing them leaves its state: sealed too.
    from test_gc import start_paused
    enc.run("delete", "second")
    proc, release = start_paused(enc, tmp_path, "gc-after-condemn", "gc", "--live-threshold", "1", env=enc.env)
    try:
        state = open(os.path.join(enc.repo, "gc.json"), "rb").read()
        assert state.startswith(b"DSE1") and holders(enc.repo, needles) == [] and holders(enc.repo, shas) == []
    finally:
        release.write_text("go")
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    # What stays readable: config.json names the repository and the scheme, and holds the
    # settings sealed; the key files hold the KDF's parameters.
    config = json.load(open(os.path.join(enc.repo, "config.json")))
    assert set(config) == {"FormatVersion", "RepositoryId", "Encryption", "SealedConfig"}
    assert config["Encryption"] == {"Cipher": "AES-256-GCM", "ChunkIds": "HMAC-SHA-256"}
    # And yet everything works: list, restore byte for byte, e2fsck, check.
    listed = enc.run("list", "--json").json()
    assert {s["SnapshotName"] for s in listed} == {SECRET_NAME}
    target = tmp_path / "restored.img"
    enc.run("restore", SECRET_NAME, target)
    assert sha256(target) == sha256(marked_disk)
    subprocess.run(["e2fsck", "-fn", str(target)], check=True, capture_output=True)
    report = enc.run("check", "--read-data", "--json").json()
    assert report["Problems"] == [] and report["ChunksVerified"] > 0


def test_a_wrong_or_missing_passphrase_fails_with_its_code_and_changes_nothing(marked_disk, tmp_path):
    enc = Encrypted(str(tmp_path / "enc"))
    enc.run("init", "--encryption", "aes-256-gcm")
    enc.run("create", marked_disk, "--name", "one")
    before = tree_state(enc.repo)
    wrong = dict(os.environ, DISKSNAP_PASSWORD="not the passphrase")
    for argv in (["list"], ["create", marked_disk, "--name", "two"], ["delete", "one"], ["gc"], ["restore", "one", str(tmp_path / "x.img")],
                 ["check"], ["key", "add"], ["stats"]):
        r = enc.run(*argv, env=wrong, check=False)
        assert r.code == 2 and "Repository.WrongKey" in r.err, (argv, r.err)
    none = {k: v for k, v in os.environ.items() if not k.startswith("DISKSNAP_PASSWORD")}
    r = subprocess.run([BIN, "--repo", enc.repo, "list"], capture_output=True, text=True, env=none, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "Repository.WrongKey" in r.stderr and "needs a passphrase" in r.stderr
    r = enc.run("list", "--key-file", str(tmp_path / "no-such-key"), check=False)
    assert r.code == 2 and "Repository.WrongKey" in r.err
    assert not os.path.exists(tmp_path / "x.img")
    assert tree_state(enc.repo) == before


def test_one_flipped_byte_in_any_kind_of_file_is_reported_and_never_restored(marked_disk, tmp_path):
    base = Encrypted(str(tmp_path / "base"))
    base.run("init", "--encryption", "aes-256-gcm")
    snap = base.create(marked_disk, "one")
    kinds = {
        "pack block": lambda r: (sorted(os.listdir(f"{r}/packs"))[0], "packs", 100),
        "pack table of contents": lambda r: (sorted(os.listdir(f"{r}/packs"))[0], "packs", -70),
        "index segment": lambda r: (sorted(os.listdir(f"{r}/index"))[0], "index", 5000),
        "fixed index": lambda r: (f"{snap}.fidx", "fixed", 30),
        "snapshot record": lambda r: (f"{snap}.json", "snapshots", 40),
        "disk record": lambda r: (sorted(os.listdir(f"{r}/disks"))[0], "disks", 40),
    }
    for kind, where in kinds.items():
        repo = str(tmp_path / kind.replace(" ", "-"))
        shutil.copytree(base.repo, repo)
        name, directory, offset = where(repo)
        path = f"{repo}/{directory}/{name}"
        flip_byte(path, offset if offset >= 0 else os.path.getsize(path) + offset)
        ds = Encrypted(repo)
        check = ds.run("check", "--read-data", "--json", check=False)
        assert check.code != 0, f"{kind}: check passed over a flipped byte"
        problems = check.json()["Problems"] if check.out.strip() else []
        assert problems or "Repository.Corrupt" in check.err, f"{kind}: {check.out} {check.err}"
        target = tmp_path / f"{kind}.img"
        restore = ds.run("restore", snap, target, check=False)
        if kind in ("disk record", "pack table of contents"):
            # What a restore does not read (it finds blocks through the index) cannot stop
            # it; what it writes is then the disk, byte for byte.
            assert restore.code == 0 and sha256(target) == sha256(marked_disk), f"{kind}: {restore.err}"
        else:
            assert restore.code != 0 and "Corrupt" in restore.err, f"{kind}: {restore.err}"
    # The settings and the key file: a flip makes the repository refuse to open.
    for name in ("config.json", "keys"):
        repo = str(tmp_path / f"flip-{name}")
        shutil.copytree(base.repo, repo)
        path = f"{repo}/{name}" if name == "config.json" else os.path.join(f"{repo}/keys", os.listdir(f"{repo}/keys")[0])
        data = open(path).read()
        field = "SealedConfig" if name == "config.json" else "SealedKeys"
        value = json.load(open(path))[field]
        mangled = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]
        open(path, "w").write(data.replace(value, mangled))
        r = Encrypted(repo).run("list", check=False)
        assert r.code != 0 and ("Repository.Corrupt" in r.err or "Repository.WrongKey" in r.err), (name, r.err)


def test_keys_are_added_changed_and_removed_and_the_last_one_stays(marked_disk, tmp_path):
    enc = Encrypted(str(tmp_path / "enc"))
    standard = {k: v for k, v in enc.env.items() if k != "DISKSNAP_KDF_LOGN"}
    enc.run("init", "--encryption", "aes-256-gcm", env=standard)  # scrypt's standard cost: 2^15, r 8, p 1
    enc.run("create", marked_disk, "--name", "one")
    first = enc.run("key", "list", "--json").json()
    assert len(first) == 1 and first[0]["Current"] and first[0]["Kind"] == "passphrase (scrypt N=2^15 r=8 p=1)"
    second = enc.run("key", "add", "--json", env=dict(enc.env, DISKSNAP_NEW_PASSWORD="second passphrase")).json()["KeyId"]
    other = Encrypted(enc.repo, password="second passphrase")
    assert {k["KeyId"] for k in other.run("key", "list", "--json").json()} == {first[0]["KeyId"], second}
    assert [k["KeyId"] for k in other.run("key", "list", "--json").json() if k["Current"]] == [second]
    # Changing the first passphrase rewrites its key file alone.
    packs_before = tree_state(os.path.join(enc.repo, "packs"))
    enc.run("key", "passwd", env=dict(enc.env, DISKSNAP_NEW_PASSWORD="changed passphrase"))
    assert enc.run("list", check=False).code == 2
    changed = Encrypted(enc.repo, password="changed passphrase")
    assert [s["SnapshotName"] for s in changed.run("list", "--json").json()] == ["one"]
    assert tree_state(os.path.join(enc.repo, "packs")) == packs_before
    # Removing: not the key in use, not an unknown one; then the other one.
    r = changed.run("key", "remove", first[0]["KeyId"], check=False)
    assert r.code == 4 and "Key.InUse" in r.err
    r = changed.run("key", "remove", "k-nosuchkeyxxxxxxxxxxxx", check=False)
    assert r.code == 3 and "Key.NotFound" in r.err
    changed.run("key", "remove", second)
    assert other.run("list", check=False).code == 2
    r = changed.run("key", "remove", first[0]["KeyId"], check=False)
    assert r.code == 4 and "Key.LastKey" in r.err
    # A key file instead of a passphrase: created at init when absent, 0600.
    keyed = DiskSnap(str(tmp_path / "keyed"))
    key_file = tmp_path / "repo.key"
    keyed.run("init", "--encryption", "aes-256-gcm", "--key-file", key_file)
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    keyed.run("create", marked_disk, "--name", "keyed", "--key-file", key_file)
    assert keyed.run("list", "--json", "--key-file", key_file).json()[0]["SnapshotName"] == "keyed"
    other_key = tmp_path / "other.key"
    other_key.write_bytes(os.urandom(32))
    r = keyed.run("list", "--key-file", other_key, check=False)
    assert r.code == 2 and "Repository.WrongKey" in r.err
    # Key commands on a repository that is not encrypted.
    plain = DiskSnap(str(tmp_path / "plain"))
    plain.run("init")
    r = plain.run("key", "list", check=False)
    assert r.code == 2 and "Repository.NotEncrypted" in r.err


def test_the_passphrase_comes_from_a_file_a_command_or_the_environment(marked_disk, tmp_path):
    repo = str(tmp_path / "enc")
    Encrypted(repo).run("init", "--encryption", "aes-256-gcm")
    bare = {k: v for k, v in os.environ.items() if not k.startswith("DISKSNAP_PASSWORD")}
    ds = DiskSnap(repo)
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD + "\n")
    assert ds.run("list", "--password-file", password_file, env=bare).code == 0
    assert ds.run("list", "--password-command", f"echo '{PASSWORD}'", env=bare).code == 0
    assert ds.run("list", env=dict(bare, DISKSNAP_PASSWORD_FILE=str(password_file))).code == 0
    r = ds.run("list", "--password-command", "exit 3", env=bare, check=False)
    assert r.code == 2 and "status 3" in r.err
    r = Encrypted(str(tmp_path / "costly")).run("init", "--encryption", "aes-256-gcm", env=dict(os.environ, DISKSNAP_PASSWORD=PASSWORD, DISKSNAP_KDF_LOGN="9"), check=False)
    assert r.code == 2 and "InvalidParameter.KdfCost" in r.err
    # An unencrypted repository never asks.
    plain = DiskSnap(str(tmp_path / "plain"))
    plain.run("init")
    assert plain.run("list", env=bare).code == 0


def test_an_encrypted_repository_in_a_bucket_and_its_cache_hold_nothing_readable(marked_disk, tmp_path):
    from test_s3 import BUCKET, Bucket, boto, connect
    server = connect("seaweedfs")
    b = Bucket(server, tmp_path)
    b.env["DISKSNAP_PASSWORD"] = PASSWORD
    b.run("init")  # a bucket is encrypted by default
    config_copies = [p for p in files_under(tmp_path / "cache") if p.endswith("/config.json")]
    assert [json.load(open(p))["FormatVersion"] for p in config_copies] == [2]
    plain = Bucket(server, tmp_path, cache="plain-cache")
    plain.run("init", "--encryption", "none")
    assert holders(str(tmp_path / "plain-cache"), [b'"Encryption" : "none"'])
    snap = b.run("create", marked_disk, "--name", SECRET_NAME, "--tag", f"owner={SECRET_TAG}", "--json").json()["SnapshotId"]
    target = tmp_path / "restored.img"
    b.run("restore", snap, target)
    assert sha256(target) == sha256(marked_disk)
    assert b.run("check", "--read-data", "--json").json()["Problems"] == []
    needles = [MARKER, SECRET_NAME.encode(), SECRET_TAG.encode()] + sorted(chunk_shas(marked_disk))
    needle_file = tmp_path / "needles"
    needle_file.write_text("\n".join(n.hex() for n in needles))
    # Every object in the bucket, read back by boto3 and searched.
    out = boto(server, """
needles = [bytes.fromhex(line) for line in open(sys.argv[3]).read().split()]
found, count = [], 0
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[1], Prefix=sys.argv[2] + '/'):
    for o in page.get('Contents', []):
        body = s3.get_object(Bucket=sys.argv[1], Key=o['Key'])['Body'].read()
        count += 1
        if any(n in body for n in needles):
            found.append(o['Key'])
print(json.dumps({'found': found, 'count': count}))
""", BUCKET, b.prefix, str(needle_file))
    result = json.loads(out)
    assert result["count"] >= 6 and result["found"] == []
    cache = tmp_path / "cache"
    assert any(files_under(cache)) and holders(str(cache), needles) == []


def test_copies_between_repositories_that_name_chunks_differently_read_and_rename_every_chunk(marked_disk, tmp_path):
    plain = DiskSnap(str(tmp_path / "plain"))
    plain.run("init")
    one = plain.create(marked_disk, "one")
    enc = Encrypted(str(tmp_path / "enc"))
    enc.run("init", "--encryption", "aes-256-gcm")
    # Unencrypted to encrypted: the target's names are keyed, nothing readable arrives.
    r = plain.run("copy", "--all", "--to", enc.repo, "--json", env=enc.env).json()
    assert [s["Copied"] for s in r["Snapshots"]] == [True] and r["Snapshots"][0]["ChunksCopied"] > 0
    shas = chunk_shas(marked_disk)
    assert holders(enc.repo, [MARKER] + sorted(shas)) == []
    assert enc.run("check", "--read-data", "--json").json()["Problems"] == []
    # To a second encrypted repository (keys of its own, its own passphrase), then back to an
    # unencrypted one: the bytes survive every renaming, and names are SHA-256 again.
    other = Encrypted(str(tmp_path / "other"), password="another passphrase")
    other.run("init", "--encryption", "aes-256-gcm")
    enc.run("copy", "--all", "--to", other.repo, env=dict(enc.env, DISKSNAP_TO_PASSWORD="another passphrase"))
    back = DiskSnap(str(tmp_path / "back"))
    back.run("init")
    other.run("copy", "--all", "--to", back.repo)
    for ds in (enc, other, back):
        target = tmp_path / f"{os.path.basename(ds.repo)}.img"
        ds.run("restore", one, target)
        assert sha256(target) == sha256(marked_disk)
    assert holders(back.repo, sorted(shas)), "the unencrypted copy names chunks by SHA-256"
    # Copied once: the second time there is nothing to do.
    again = plain.run("copy", "--all", "--to", enc.repo, "--json", env=enc.env).json()
    assert [s["Copied"] for s in again["Snapshots"]] == [False]


def test_a_repository_sharing_a_chunk_id_key_takes_copies_as_stored(marked_disk, tmp_path):
    first = Encrypted(str(tmp_path / "first"))
    first.run("init", "--encryption", "aes-256-gcm")
    one = first.create(marked_disk, "one")
    # Sharing the first one's chunk ids (its passphrase given apart), with a data key and a
    # passphrase of its own.
    password_file = tmp_path / "first-pw"
    password_file.write_text(PASSWORD + "\n")
    sharing = Encrypted(str(tmp_path / "sharing"), password="the sharing one")
    sharing.run("init", "--encryption", "aes-256-gcm", "--chunk-ids-from", first.repo, "--from-password-file", password_file)
    r = first.run("copy", one, "--to", sharing.repo, "--json", env=dict(first.env, DISKSNAP_TO_PASSWORD="the sharing one")).json()
    assert r["Snapshots"][0]["Copied"] and r["Snapshots"][0]["ChunksAsStored"] > 0, r
    target = tmp_path / "sharing.img"
    sharing.run("restore", one, target)
    assert sha256(target) == sha256(marked_disk)
    # The same names, sealed under the sharing one's own data key.
    assert sharing.run("check", "--read-data", "--json").json()["Problems"] == []
    # A repository of its own renames every chunk: nothing goes over as stored.
    alone = Encrypted(str(tmp_path / "alone"))
    alone.run("init", "--encryption", "aes-256-gcm")
    r = first.run("copy", one, "--to", alone.repo, "--json").json()
    assert r["Snapshots"][0]["ChunksAsStored"] == 0
    # Refused: sharing with an unencrypted repository, or without encryption.
    plain = DiskSnap(str(tmp_path / "plain"))
    plain.run("init")
    r = Encrypted(str(tmp_path / "bad")).run("init", "--encryption", "aes-256-gcm", "--chunk-ids-from", plain.repo, check=False)
    assert r.code == 2 and "InvalidParameter.ChunkIdsFrom" in r.err
    r = DiskSnap(str(tmp_path / "bad2")).run("init", "--chunk-ids-from", first.repo, check=False)
    assert r.code == 2 and "InvalidParameter.ChunkIdsFrom" in r.err


def at_terminal(argv, answers, env):
    """Runs `argv` on a new pseudo-terminal (its controlling terminal), typing each answer
    after the prompt before it appears; returns (exit status, everything the terminal showed)."""
    import pty
    import select
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env)
    shown, pending = b"", list(answers)
    while True:
        ready, _, _ = select.select([fd], [], [], 30)
        assert ready, f"no output for 30 s: {shown!r}"
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        shown += data
        if pending and shown.rstrip().endswith(pending[0][0].encode()):
            os.write(fd, pending.pop(0)[1].encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_a_passphrase_typed_at_the_terminal_is_not_echoed_and_asked_twice_at_init(marked_disk, tmp_path):
    repo = str(tmp_path / "enc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKSNAP_PASSWORD")}
    code, shown = at_terminal([BIN, "--repo", repo, "init", "--encryption", "aes-256-gcm"],
                              [("Passphrase for " + repo + ":", "typed secret"), ("The same passphrase again:", "typed secret")], env)
    assert code == 0, shown
    assert "typed secret" not in shown and "encrypted" in shown
    code, shown = at_terminal([BIN, "--repo", repo, "list"], [("Passphrase for " + repo + ":", "typed secret")], env)
    assert code == 0 and "typed secret" not in shown, shown
    # Two different answers at init: refused, nothing made.
    other = str(tmp_path / "other")
    code, shown = at_terminal([BIN, "--repo", other, "init", "--encryption", "aes-256-gcm"],
                              [("Passphrase for " + other + ":", "one"), ("The same passphrase again:", "two")], env)
    assert code == 2 and "Repository.WrongKey" in shown and not os.path.exists(os.path.join(other, "config.json"))


def test_the_api_servers_keys_in_an_encrypted_repository_are_sealed(tmp_path):
    enc = Encrypted(str(tmp_path / "enc"))
    enc.run("init", "--encryption", "aes-256-gcm")
    first = enc.run("serve", "--new-key", "--json").json()
    second = enc.run("serve", "--new-key", "--json").json()
    secrets = [k["AccessKeySecret"].encode() for k in (first, second)]
    assert os.path.exists(os.path.join(enc.repo, "api", "credentials.json"))
    assert holders(enc.repo, secrets + [first["AccessKeyId"].encode()]) == []
    # Read back through the key: one removed, the other still there, the wrong passphrase refused.
    assert enc.run("serve", "--remove-key", first["AccessKeyId"]).code == 0
    r = enc.run("serve", "--remove-key", first["AccessKeyId"], check=False)
    assert r.code == 3 and "InvalidAccessKeyId.NotFound" in r.err
    r = enc.run("serve", "--new-key", env=dict(enc.env, DISKSNAP_PASSWORD="wrong"), check=False)
    assert r.code == 2 and "Repository.WrongKey" in r.err
