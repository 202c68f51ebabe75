"""tools/install into a staging directory (--destdir) with the built binary: every file is
there, the man pages render, the completions load, the units pass `systemd-analyze verify`,
/etc/default/disksnap is never overwritten, and --uninstall leaves nothing behind."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, BIN

INSTALL = os.path.join(ROOT, "tools", "install")
PREFIX = "/usr"
UNITS = ["disksnap-serve.service", "disksnap-auto@.service", "disksnap-auto@.timer"]


def tool(destdir, *args):
    argv = [INSTALL, "--destdir", str(destdir), "--prefix", PREFIX, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.stdout


def install(destdir, *extra):
    return tool(destdir, "--no-build", "--binary", BIN, *extra)


def uninstall(destdir):
    return tool(destdir, "--uninstall")


def tree(root):
    """Every file and directory under root, as paths from root ("/usr/bin/disksnap")."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add("/" + os.path.relpath(os.path.join(folder, name), root))
    return found


def manifest(destdir):
    with open(f"{destdir}{PREFIX}/share/disksnap/install-manifest") as f:
        return [line.split() for line in f.read().splitlines()]


def visible_commands():
    """disksnap, disksnap.create, disksnap.disk.add, ...: the commands the help shows."""
    dump = json.loads(subprocess.run([BIN, "--experimental-dump-help"], check=True, capture_output=True, text=True).stdout)
    names = []

    def walk(command, name):
        names.append(name)
        for sub in command.get("subcommands", []):
            if sub.get("shouldDisplay", True):
                walk(sub, f"{name}.{sub['commandName']}")
    walk(dump["command"], "disksnap")
    return names


@pytest.fixture
def staged(tmp_path):
    destdir = tmp_path / "stage"
    out = install(destdir)
    return destdir, out


def test_install_writes_every_file_and_uninstall_removes_all_of_them(staged):
    destdir, out = staged
    expected = [f"{PREFIX}/bin/disksnap",
                f"{PREFIX}/share/bash-completion/completions/disksnap",
                f"{PREFIX}/share/zsh/site-functions/_disksnap",
                f"{PREFIX}/share/fish/vendor_completions.d/disksnap.fish",
                f"{PREFIX}/share/doc/disksnap/disksnap.default",
                f"{PREFIX}/share/doc/disksnap/INSTALL.md",
                "/etc/default/disksnap"]
    expected += [f"{PREFIX}/lib/systemd/system/{unit}" for unit in UNITS]
    expected += [f"{PREFIX}/share/man/man1/{name}.1" for name in visible_commands()]
    for path in expected:
        assert os.path.isfile(f"{destdir}{path}"), f"{path} not installed"
        assert f"installed {destdir}{path}" in out, f"{path} not in what the install printed"
    assert os.access(f"{destdir}{PREFIX}/bin/disksnap", os.X_OK)
    version = subprocess.run([f"{destdir}{PREFIX}/bin/disksnap", "--version"], check=True, capture_output=True, text=True)
    assert version.stdout.strip()
    assert os.stat(f"{destdir}/etc/default/disksnap").st_mode & 0o777 == 0o600

    # The manifest names exactly what is there: the files, and every directory made.
    entries = manifest(destdir)
    listed = {e[1] for e in entries}
    assert listed == tree(destdir)
    assert {e[1] for e in entries if e[0] == "conf"} == {"/etc/default/disksnap"}
    # Nothing outside the staging directory: every path is under PREFIX or /etc.
    assert all(p.startswith((PREFIX + "/", "/etc/")) or p in (PREFIX, "/etc") for p in listed)

    uninstall(destdir)
    assert tree(destdir) == set()


def test_hidden_commands_get_no_man_page(staged):
    destdir, _ = staged
    pages = os.listdir(f"{destdir}{PREFIX}/share/man/man1")
    assert sorted(pages) == sorted(f"{name}.1" for name in visible_commands())
    for page in pages:
        with open(f"{destdir}{PREFIX}/share/man/man1/{page}") as f:
            assert "guest-thaw-watchdog" not in f.read(), page


def test_man_pages_render(staged):
    destdir, _ = staged
    mandir = f"{destdir}{PREFIX}/share/man/man1"
    env = dict(os.environ, MANWIDTH="100", LC_ALL="C.UTF-8")
    text = subprocess.run(["man", "-l", f"{mandir}/disksnap.1"], check=True, capture_output=True, text=True, env=env).stdout
    assert "NAME" in text and "disksnap" in text and "SEE ALSO" in text
    assert "disksnap.create(1)" in text
    assert not text.rstrip().endswith(",")
    serve = subprocess.run(["man", "-l", f"{mandir}/disksnap.serve.1"], check=True, capture_output=True, text=True, env=env).stdout
    assert "--new-key" in serve and "--listen" in serve
    for page in sorted(os.listdir(mandir)):
        proc = subprocess.run(["groff", "-mandoc", "-Tutf8", "-ww", "-z", f"{mandir}/{page}"], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", f"{page}: {proc.stderr}"


def test_completions_load(staged):
    destdir, _ = staged
    bash = f"{destdir}{PREFIX}/share/bash-completion/completions/disksnap"
    subprocess.run(["bash", "-n", bash], check=True)
    proc = subprocess.run(["bash", "-c", f'source "{bash}" && complete -p disksnap'], check=True, capture_output=True, text=True)
    assert "-F _disksnap disksnap" in proc.stdout
    zsh = f"{destdir}{PREFIX}/share/zsh/site-functions/_disksnap"
    fish = f"{destdir}{PREFIX}/share/fish/vendor_completions.d/disksnap.fish"
    with open(zsh) as f:
        assert f.readline().strip() == "#compdef disksnap"
    with open(fish) as f:
        assert "complete -c 'disksnap'" in f.read()
    for shell, path in (("zsh", zsh), ("fish", fish)):
        if shutil.which(shell):
            subprocess.run([shell, "-n", path], check=True)


def test_units_name_the_installed_binary_and_pass_systemd_analyze_verify(staged, tmp_path):
    destdir, _ = staged
    unitdir = f"{destdir}{PREFIX}/lib/systemd/system"
    texts = {}
    for unit in UNITS:
        with open(f"{unitdir}/{unit}") as f:
            texts[unit] = f.read()
        assert "@BINDIR@" not in texts[unit] and "@DOCDIR@" not in texts[unit]
    for unit in ("disksnap-serve.service", "disksnap-auto@.service"):
        assert f"ExecStart={PREFIX}/bin/disksnap --repo ${{DISKSNAP_REPO}} " in texts[unit]
        assert "EnvironmentFile=-/etc/default/disksnap\n" in texts[unit]
        assert "ProtectSystem=strict\n" in texts[unit] and "StateDirectory=disksnap\n" in texts[unit]
        # /dev as it is: disksnap reads (and restores to) block devices.
        options = [line for line in texts[unit].splitlines() if not line.startswith("#")]
        assert not any(line.startswith(("PrivateDevices=", "DeviceAllow=", "DevicePolicy=", "ProtectClock="))
                       for line in options)
    assert "serve --listen ${DISKSNAP_LISTEN}" in texts["disksnap-serve.service"]
    assert "Restart=on-failure\n" in texts["disksnap-serve.service"]
    assert " auto %i --keep ${DISKSNAP_AUTO_KEEP}" in texts["disksnap-auto@.service"]
    assert "Persistent=true\n" in texts["disksnap-auto@.timer"]
    assert "RandomizedDelaySec=" in texts["disksnap-auto@.timer"]

    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("no systemd-analyze")
    # verify checks that ExecStart= is executable and Documentation=man: pages exist: point
    # both at the staging directory. An instance of the template is verified as well.
    check = tmp_path / "units"
    check.mkdir()
    for unit in UNITS:
        text = texts[unit].replace(f"{PREFIX}/bin/disksnap", f"{destdir}{PREFIX}/bin/disksnap")
        (check / unit).write_text(text)
        if "@." in unit:
            (check / unit.replace("@.", "@data.")).write_text(text)
    env = dict(os.environ, MANPATH=f"{destdir}{PREFIX}/share/man")
    files = sorted(str(p) for p in check.iterdir())
    proc = subprocess.run([analyze, "verify", *files], capture_output=True, text=True, env=env, cwd=check)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if "disksnap" in line]
    assert proc.returncode == 0 and complaints == [], proc.stdout + proc.stderr


def test_an_existing_etc_default_disksnap_is_never_overwritten_nor_removed(tmp_path):
    destdir = tmp_path / "stage"
    (destdir / "etc" / "default").mkdir(parents=True)
    mine = "DISKSNAP_REPO=/srv/disksnap\n"
    (destdir / "etc" / "default" / "disksnap").write_text(mine)
    out = install(destdir)
    assert f"kept {destdir}/etc/default/disksnap" in out
    assert (destdir / "etc" / "default" / "disksnap").read_text() == mine
    assert not any(e[0] == "conf" for e in manifest(destdir))
    uninstall(destdir)
    assert tree(destdir) == {"/etc", "/etc/default", "/etc/default/disksnap"}
    assert (destdir / "etc" / "default" / "disksnap").read_text() == mine


def test_an_edited_etc_default_disksnap_survives_reinstall_and_uninstall(staged):
    destdir, _ = staged
    settings = destdir / "etc" / "default" / "disksnap"
    settings.write_text(settings.read_text() + "DISKSNAP_AUTO_KEEP=30\n")
    edited = settings.read_text()
    out = install(destdir)
    assert f"kept {settings}" in out and settings.read_text() == edited
    out = uninstall(destdir)
    assert f"kept {settings}" in out
    assert tree(destdir) == {"/etc", "/etc/default", "/etc/default/disksnap"}
    assert settings.read_text() == edited


def test_reinstall_removes_what_the_new_version_no_longer_installs(staged):
    destdir, _ = staged
    before = tree(destdir)
    # A page an earlier version installed (a subcommand since removed), in the manifest.
    stale = f"{PREFIX}/share/man/man1/disksnap.retired.1"
    with open(f"{destdir}{stale}", "w") as f:
        f.write(".Dd\n")
    with open(f"{destdir}{PREFIX}/share/disksnap/install-manifest", "a") as f:
        f.write(f"file {stale}\n")
    out = install(destdir)
    assert f"removed {destdir}{stale}" in out
    assert tree(destdir) == before
    uninstall(destdir)
    assert tree(destdir) == set()


def test_no_systemd_installs_neither_units_nor_etc(tmp_path):
    destdir = tmp_path / "stage"
    install(destdir, "--no-systemd")
    found = tree(destdir)
    assert f"{PREFIX}/bin/disksnap" in found and f"{PREFIX}/share/man/man1/disksnap.1" in found
    assert not any(p.startswith(("/etc", f"{PREFIX}/lib/systemd")) for p in found)
    uninstall(destdir)
    assert tree(destdir) == set()
