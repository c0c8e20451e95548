"""Media for one-way transfers: the media tar in parts (media-split.sh) and reassemble.sh.

prepare's own tar task (rendered from roles/bundle/tasks/media.yml) tars a small fake bundle;
media-split.sh splits it as the seal does; reassemble.sh, the one command run inside the gap,
puts it back together elsewhere, or refuses, naming the part to copy again.
"""

import hashlib
import os
import random
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import jinja2
import pytest
import yaml

from tests.conftest import ROOT

ROLE = ROOT / "roles" / "bundle"
SPLIT = ROLE / "files" / "media-split.sh"
REASSEMBLE = ROLE / "files" / "reassemble.sh"
VERSION = "2026.11.25-1"
TAR = f"{VERSION}.tar"
PART = 64 * 1024
REAL_CAT = shutil.which("cat")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_bundle(root: Path) -> Path:
    """A sealed-looking bundle of a few hundred KB (incompressible, like GGUF and layers)."""
    bundle = root / VERSION
    rng = random.Random(14)
    for name, size in {"images/ollama.tar": 200_000, "models/blobs/sha256-ab": 150_000,
                       "bundle.json": 300}.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_bytes(rng.randbytes(size))
    sums = "".join(f"{sha256(path)}  {path.relative_to(bundle)}\n"
                   for path in sorted(bundle.rglob("*")) if path.is_file())
    (bundle / "SHA256SUMS").write_text(sums)
    (bundle / ".hashcache.json").write_text("{}")  # the seal's cache: never on the media
    return bundle


def tar_task_script(bundle: Path) -> str:
    """The shell of prepare's own tar task, rendered as Ansible would."""
    tasks = yaml.safe_load((ROLE / "tasks" / "media.yml").read_text())
    task = next(task for task in tasks if task["name"].startswith("Tar the bundle"))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters.update(quote=shlex.quote, dirname=os.path.dirname)
    return env.from_string(task["ansible.builtin.shell"]).render(
        bundle_dir=str(bundle), bundle_version=VERSION)


def make_tar(bundle: Path) -> None:
    subprocess.run(["bash", "-c", tar_task_script(bundle)], check=True)


def split(root: Path, part: int = PART, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(SPLIT), str(root / TAR), str(part), str(REASSEMBLE)],
                            capture_output=True, text=True, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def reassemble(parts: Path, *args: str, shell: str = "sh", cwd: Path | None = None,
               path_first: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C")
    if path_first:
        env["PATH"] = f"{path_first}:{env['PATH']}"
    return subprocess.run([shell, str(parts / "reassemble.sh"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


def tool(directory: Path, name: str, body: str) -> Path:
    """A stand-in for one command, found first in PATH."""
    directory.mkdir(exist_ok=True)
    script = directory / name
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return directory


def mtimes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}


@pytest.fixture
def media(tmp_path):
    """<root>/<version>/, <version>.tar + .sha256 and <version>.parts/ in 64 KiB parts."""
    root = tmp_path / "staging"
    make_tar(make_bundle(root))
    result = split(root)
    assert result.stdout.startswith("written: ")
    return root


@pytest.fixture
def carried(media, tmp_path):
    """The parts directory as it arrived inside the gap, under another name."""
    drop = tmp_path / "gateway-drop"
    shutil.copytree(media / f"{VERSION}.parts", drop)
    return drop


def test_the_tar_task_leaves_out_the_hash_cache_and_checks(media):
    check = subprocess.run(["sha256sum", "-c", f"{TAR}.sha256"], cwd=media, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0 and f"{TAR}: OK" in check.stdout
    with tarfile.open(media / TAR) as tar:
        names = tar.getnames()
    assert f"{VERSION}/SHA256SUMS" in names and f"{VERSION}/.hashcache.json" not in names


def test_split_writes_parts_of_at_most_the_size_with_their_checksums(media):
    parts = media / f"{VERSION}.parts"
    size = (media / TAR).stat().st_size
    count = -(-size // PART)
    names = [f"{TAR}.{index:03d}" for index in range(count)]
    assert sorted(path.name for path in parts.iterdir()) == sorted(
        [*names, "PARTS.SHA256SUMS", f"{TAR}.sha256", "reassemble.sh"])
    sizes = [(parts / name).stat().st_size for name in names]
    assert count >= 5 and all(s == PART for s in sizes[:-1]) and 0 < sizes[-1] <= PART
    assert sum(sizes) == size
    assert b"".join((parts / name).read_bytes() for name in names) == (media / TAR).read_bytes()
    # sha256sum -c format, one line per part in order; the whole tar in its own file.
    lines = (parts / "PARTS.SHA256SUMS").read_text().splitlines()
    assert lines == [f"{sha256(parts / name)}  {name}" for name in names]
    check = subprocess.run(["sha256sum", "-c", "--strict", "PARTS.SHA256SUMS"], cwd=parts,
                           capture_output=True, check=False)
    assert check.returncode == 0
    assert (parts / f"{TAR}.sha256").read_text() == (media / f"{TAR}.sha256").read_text()
    assert (parts / "reassemble.sh").read_bytes() == REASSEMBLE.read_bytes()
    assert not list(media.glob(f".{VERSION}.parts*"))  # no temporary directory left


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_reassembled_elsewhere_the_tar_is_the_same_and_unpacks(media, carried, tmp_path, shell):
    out = tmp_path / "inside" / "bundles"
    result = reassemble(carried, str(out), shell=shell, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / TAR).read_bytes() == (media / TAR).read_bytes()
    assert (out / f"{TAR}.sha256").read_text() == (media / f"{TAR}.sha256").read_text()
    assert sorted(path.name for path in out.iterdir()) == [TAR, f"{TAR}.sha256"]  # no .partial
    assert f"OK: {out}/{TAR} is whole" in result.stdout
    command = f"cd {out} && tar -xf {TAR} && cd {VERSION} && sha256sum -c SHA256SUMS"
    assert command in result.stdout
    unpacked = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              check=False)
    assert unpacked.returncode == 0, unpacked.stdout + unpacked.stderr
    assert not (out / VERSION / ".hashcache.json").exists()


def test_without_an_output_dir_it_writes_to_the_current_directory(media, carried, tmp_path):
    here = tmp_path / "work"
    here.mkdir()
    result = reassemble(carried, cwd=here)
    assert result.returncode == 0, result.stderr
    assert sha256(here / TAR) == sha256(media / TAR)


def test_running_it_again_after_success_changes_nothing(carried, tmp_path):
    out = tmp_path / "out"
    assert reassemble(carried, str(out)).returncode == 0
    before = mtimes(out)
    again = reassemble(carried, str(out))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout and f"cd {out} && tar -xf {TAR}" in again.stdout
    assert mtimes(out) == before
    # Done once, the parts are no longer needed.
    for part in carried.glob(f"{TAR}.0*"):
        part.unlink()
    assert reassemble(carried, str(out)).returncode == 0


def test_a_missing_part_is_named_and_nothing_is_written(carried, tmp_path):
    out = tmp_path / "out"
    (carried / f"{TAR}.002").unlink()
    result = reassemble(carried, str(out))
    assert result.returncode == 1
    assert f"missing: {TAR}.002" in result.stderr
    assert "Copy the part(s) named above again from the media" in result.stderr
    assert f"{TAR}.001: OK" in result.stdout  # the others are still checked
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_something_other_than_a_file_where_the_tar_goes_is_refused(carried, tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if kind == "directory":
        (out / TAR).mkdir()
    else:
        (out / TAR).symlink_to(elsewhere / "victim")
    result = reassemble(carried, str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{out / TAR} exists and is not a regular file" in result.stderr
    assert "OK:" not in result.stdout
    assert list(elsewhere.iterdir()) == []
    assert not (out / TAR).is_file()


def test_a_damaged_part_is_named_and_nothing_is_written(carried, tmp_path):
    out = tmp_path / "out"
    part = carried / f"{TAR}.003"
    damaged = bytearray(part.read_bytes())
    damaged[1000] ^= 0x01
    part.write_bytes(bytes(damaged))
    (carried / f"{TAR}.000").unlink()
    result = reassemble(carried, str(out))
    assert result.returncode == 1
    assert f"damaged: {TAR}.003" in result.stderr and f"missing: {TAR}.000" in result.stderr
    assert f"{TAR}.001" not in result.stderr
    assert list(out.iterdir()) == []


def test_a_part_truncated_in_transfer_is_named(carried, tmp_path):
    part = carried / f"{TAR}.001"
    part.write_bytes(part.read_bytes()[:1000])
    result = reassemble(carried, str(tmp_path / "out"))
    assert result.returncode == 1 and f"damaged: {TAR}.001" in result.stderr
    assert not (tmp_path / "out" / TAR).exists()


def test_a_part_the_list_does_not_name_is_never_joined(media, carried, tmp_path):
    (carried / f"{TAR}.099").write_bytes(b"left over from another transfer")
    out = tmp_path / "out"
    result = reassemble(carried, str(out))
    assert result.returncode == 0, result.stderr
    assert f"Ignoring {TAR}.099" in result.stdout
    assert (out / TAR).read_bytes() == (media / TAR).read_bytes()


def test_lists_a_gateway_gave_crlf_line_ends_still_work(media, carried, tmp_path):
    for name in ("PARTS.SHA256SUMS", f"{TAR}.sha256"):
        path = carried / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    result = reassemble(carried, str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert sha256(tmp_path / "out" / TAR) == sha256(media / TAR)


def test_a_damaged_list_is_refused(carried, tmp_path):
    (carried / "PARTS.SHA256SUMS").write_text("not a checksum line\n")
    result = reassemble(carried, str(tmp_path / "out"))
    assert result.returncode == 2 and "PARTS.SHA256SUMS line 1" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_an_output_dir_without_the_space_is_refused_before_anything(carried, tmp_path):
    df = tool(tmp_path / "bin", "df", 'echo "Filesystem 1024-blocks Used Available Capacity '
              'Mounted on"; echo "/dev/fake 1000 990 10 99% /"')
    out = tmp_path / "out"
    result = reassemble(carried, str(out), path_first=df)
    assert result.returncode == 2
    assert f"not enough space in {out}" in result.stderr and "10 KiB are free" in result.stderr
    assert "Checking" not in result.stdout  # refused before reading the parts
    assert list(out.iterdir()) == []


def test_a_join_that_fails_halfway_leaves_no_tar(media, carried, tmp_path):
    # The first part is written, then the "disk" fails.
    cat = tool(tmp_path / "bin", "cat", f'[ "$1" = -- ] && shift\n{REAL_CAT} -- "$1"\nexit 1')
    out = tmp_path / "out"
    result = reassemble(carried, str(out), path_first=cat)
    assert result.returncode != 0 and f"Nothing named {TAR} was written" in result.stderr
    assert list(out.iterdir()) == []  # the .partial is removed too
    assert reassemble(carried, str(out)).returncode == 0
    assert sha256(out / TAR) == sha256(media / TAR)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_join_leaves_no_tar_and_the_next_run_finishes(media, carried, tmp_path, sig):
    started = tmp_path / "joining"
    cat = tool(tmp_path / "bin", "cat",
               f'[ "$1" = -- ] && shift\n{REAL_CAT} -- "$1"\n: > {started}\nexec sleep 60')
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{cat}:{os.environ['PATH']}")
    run = subprocess.Popen(["sh", str(carried / "reassemble.sh"), str(out)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        assert (out / f"{TAR}.partial").stat().st_size == PART
        os.killpg(run.pid, sig)
        assert run.wait(timeout=30) != 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert not (out / TAR).exists()
    if sig == signal.SIGTERM:
        assert list(out.iterdir()) == []  # its trap removed the .partial
    again = reassemble(carried, str(out))
    assert again.returncode == 0, again.stderr
    assert sorted(path.name for path in out.iterdir()) == [TAR, f"{TAR}.sha256"]
    assert sha256(out / TAR) == sha256(media / TAR)


def test_split_again_with_nothing_changed_rewrites_nothing(media):
    parts = media / f"{VERSION}.parts"
    before, inode = mtimes(parts), parts.stat().st_ino
    result = split(media)
    assert result.stdout.startswith("unchanged: ")
    assert "parts of at most 65536 bytes" in result.stdout
    assert mtimes(parts) == before and parts.stat().st_ino == inode


def test_split_rewrites_the_parts_for_another_tar_or_part_size(media):
    parts = media / f"{VERSION}.parts"
    bundle = media / VERSION
    (bundle / "bundle.json").write_text('{"changed": true}')
    (media / TAR).unlink()  # as when the seal is newer than the tar
    make_tar(bundle)
    assert not parts.exists()  # the tar task drops the parts of the old tar
    assert split(media).stdout.startswith("written: ")
    assert sha256(parts / f"{TAR}.sha256") == sha256(media / f"{TAR}.sha256")
    assert split(media, part=100_000).stdout.startswith("written: ")
    count = -(-(media / TAR).stat().st_size // 100_000)
    assert len(list(parts.glob(f"{TAR}.0*"))) == count  # none of the 64 KiB parts left
    assert split(media, part=100_000).stdout.startswith("unchanged: ")


def test_split_mends_a_parts_directory_that_no_longer_fits(media):
    parts = media / f"{VERSION}.parts"
    (parts / f"{TAR}.001").write_bytes(b"short")
    assert split(media).stdout.startswith("written: ")
    assert (parts / f"{TAR}.001").stat().st_size == PART
    (parts / f"{TAR}.777").write_bytes(b"stray")
    assert split(media).stdout.startswith("written: ")
    assert not (parts / f"{TAR}.777").exists()


def test_split_refuses_a_tar_that_does_not_match_its_checksum(media):
    parts = media / f"{VERSION}.parts"
    shutil.rmtree(parts)
    tar = media / TAR
    data = bytearray(tar.read_bytes())
    data[5000] ^= 0x01
    tar.write_bytes(bytes(data))
    result = split(media, check=False)
    assert result.returncode != 0 and "does not match its .sha256" in result.stderr
    assert not parts.exists() and not list(media.glob(f".{VERSION}.parts*"))


def test_an_interrupted_split_leaves_no_parts_directory(media, tmp_path):
    parts = media / f"{VERSION}.parts"
    shutil.rmtree(parts)
    fail = tool(tmp_path / "bin", "split", "exit 1")
    env = dict(os.environ, PATH=f"{fail}:{os.environ['PATH']}")
    result = subprocess.run(["bash", str(SPLIT), str(media / TAR), str(PART), str(REASSEMBLE)],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert not parts.exists() and not list(media.glob(f".{VERSION}.parts*"))


def test_a_part_written_short_fails_the_split(media, tmp_path):
    # As on a full disk: tee writes part 001 short, yet passes every byte on to sha256sum.
    parts = media / f"{VERSION}.parts"
    shutil.rmtree(parts)
    real_tee, real_head = shutil.which("tee"), shutil.which("head")
    body = (f'[ "$1" = -- ] && shift\n'
            f'case $1 in *.001) {real_tee} -- "$1.full" && {real_head} -c 100 "$1.full" > "$1"\n'
            f'  rm -f -- "$1.full"; exit 1 ;;\nesac\nexec {real_tee} -- "$@"')
    short = tool(tmp_path / "bin", "tee", body)
    env = dict(os.environ, PATH=f"{short}:{os.environ['PATH']}")
    result = subprocess.run(["bash", str(SPLIT), str(media / TAR), str(PART), str(REASSEMBLE)],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "do not add up" in result.stderr, result.stderr
    assert not parts.exists() and not list(media.glob(f".{VERSION}.parts*"))


def test_over_a_thousand_parts_keep_their_order(tmp_path):
    root = tmp_path / "staging"
    bundle = root / VERSION
    bundle.mkdir(parents=True)
    (bundle / "SHA256SUMS").write_text("")
    make_tar(bundle)  # 10240 bytes: tar's smallest
    split(root, part=10)
    parts = root / f"{VERSION}.parts"
    names = [line.split()[1] for line in (parts / "PARTS.SHA256SUMS").read_text().splitlines()]
    assert len(names) == 1024 and names[0] == f"{TAR}.0000" and names[-1] == f"{TAR}.1023"
    assert b"".join((parts / name).read_bytes() for name in names) == (root / TAR).read_bytes()


def test_reassemble_takes_parts_numbered_with_more_digits(media, carried, tmp_path):
    lines = []
    for index, line in enumerate((carried / "PARTS.SHA256SUMS").read_text().splitlines()):
        digest, name = line.split()
        (carried / name).rename(carried / f"{TAR}.{index:04d}")
        lines.append(f"{digest}  {TAR}.{index:04d}\n")
    (carried / "PARTS.SHA256SUMS").write_text("".join(lines))
    result = reassemble(carried, str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert sha256(tmp_path / "out" / TAR) == sha256(media / TAR)


def test_the_role_declares_the_part_size_and_runs_the_split():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    option = specs["argument_specs"]["main"]["options"]["bundle_media_part_bytes"]
    assert defaults["bundle_media_part_bytes"] == 0
    assert option["type"] == "int" and option["default"] == 0
    seal = yaml.safe_load((ROLE / "tasks" / "seal.yml").read_text())
    assert any(task.get("ansible.builtin.import_tasks") == "media.yml" for task in seal)
    media = yaml.safe_load((ROLE / "tasks" / "media.yml").read_text())
    argv = next(task for task in media if "ansible.builtin.command" in task)[
        "ansible.builtin.command"]["argv"]
    assert argv[1] == "{{ role_path }}/files/media-split.sh"
    assert argv[-1] == "{{ role_path }}/files/reassemble.sh"
