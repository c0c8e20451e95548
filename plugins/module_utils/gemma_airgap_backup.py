# -*- coding: utf-8 -*-
# Shared by the gemma-airgap backup modules; stdlib only (it runs on the control node and
# on closed-network targets).
"""The backup store: dated sets sealed like a bundle, and one pool of model blobs.

    <root>/blobs/sha256-<hex>             every model blob once, named by its digest
    <root>/sets/<YYYYmmddTHHMMSSZ>/       a sealed set: backup.json, SHA256SUMS,
        <host>/config.tar                 the target's files (release, stack, manifests, ...)
        <host>/blobs/sha256-<hex>         hard links into the pool
    <root>/sets/.partial-<name>/          a set being written: never taken for a whole one
    <root>/incoming/                      blobs on their way into the pool
    <root>/.lock                          the run writing to the store now (its process)

A blob enters the pool only after its content hashed to its name, so a set lists its blobs'
digests without reading them again; a restore reads everything. A set becomes visible by
one rename once its SHA256SUMS is written, so a cut backup leaves only a .partial- directory,
which the next backup's prune removes. Retention removes sets, and then every pool blob no
remaining set links to (its link count is 1).

One run writes at a time: a prune removes other runs' partial sets and pool blobs not yet
linked into a set, so a second run beside the first would destroy its work. A run takes the
store at begin and gives it back at prune; it is named by its ansible-playbook process
(pid and start time), so a run that died leaves a lock the next run sees is stale and takes.
"""

from __future__ import absolute_import, division, print_function

import contextlib
import datetime
import errno
import json
import os
import re
import shutil

from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_bundle import (
    SUMS,
    SUMS_LIMIT,
    parse_sums,
    relative_path,
    sums_line,
)
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files import (
    ChecksumMismatch,
    UnsafeFile,
    copy_verified,
    open_regular,
    read_regular,
    sha256_file,
    sha256_reader,
    write_atomic,
)

__metaclass__ = type

MANIFEST = "backup.json"
FORMAT = 1
SET_PATTERN = re.compile(r"[0-9]{8}T[0-9]{6}Z")
BLOB_PATTERN = re.compile(r"sha256-[0-9a-f]{64}")
HOST_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
PARTIAL = ".partial-"
LOCK = ".lock"
RUNNERS = ("ansible-playbook", "ansible")


class BackupError(Exception):
    """What is wrong with a store, a set or a request, in words for the operator."""


def _proc_stat(pid):
    """(parent pid, start time in clock ticks) of a process, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as stat:
            data = stat.read()
    except (OSError, ValueError):
        return None
    # The command (field 2) may hold spaces and parentheses: count from its last ")".
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[1]), int(fields[19])


def _runs_ansible(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            argv = cmdline.read(1 << 16).split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(arg.decode("utf-8", "replace")) in RUNNERS for arg in argv)


def run_owner():
    """The process a backup run is, as {"pid", "start"}: the outermost ansible-playbook above
    this module (its workers are forks with the same command line), else the module's parent."""
    pid, owner = os.getppid(), os.getppid()
    for _depth in range(64):
        if pid <= 1:
            break
        if _runs_ansible(pid):
            owner = pid
        found = _proc_stat(pid)
        if found is None:
            break
        pid = found[0]
    found = _proc_stat(owner)
    return {"pid": owner, "start": found[1] if found else 0}


def owner_alive(owner):
    found = _proc_stat(owner.get("pid", 0)) if isinstance(owner.get("pid"), int) else None
    return found is not None and found[1] == owner.get("start")


def set_name(moment):
    """The name of a set made at a UTC datetime."""
    return moment.strftime("%Y%m%dT%H%M%SZ")


def set_time(name):
    return datetime.datetime.strptime(name, "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc)


def check_blob(name):
    if not isinstance(name, str) or not BLOB_PATTERN.fullmatch(name):
        raise BackupError("%r is not a blob name (sha256-<64 lower-case hex>)" % (name,))
    return name


def check_host(name):
    if not isinstance(name, str) or not HOST_PATTERN.fullmatch(name):
        raise BackupError("%r is not a host name a set can hold" % (name,))
    return name


class Store:
    """One backup location: its pool and its sets."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.pool = os.path.join(self.root, "blobs")
        self.sets_dir = os.path.join(self.root, "sets")
        self.incoming = os.path.join(self.root, "incoming")

    # --- the pool ------------------------------------------------------------------------

    def ensure(self):
        for directory in (self.root, self.pool, self.sets_dir, self.incoming):
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o750)

    def blob_path(self, name):
        return os.path.join(self.pool, check_blob(name))

    def has_blob(self, name):
        try:
            with open_regular(self.blob_path(name)):
                return True
        except (OSError, UnsafeFile):
            return False

    def adopt(self, names, bundle_roots):
        """Take into the pool the blobs that a bundle on this location already holds (most
        are), each checked against its name. Returns (adopted, still missing)."""
        adopted, missing = [], []
        for name in names:
            if self.has_blob(name):
                continue
            source = self._in_bundles(name, bundle_roots)
            if source and self._take(source, name):
                adopted.append(name)
            else:
                missing.append(name)
        return adopted, missing

    def _in_bundles(self, name, bundle_roots):
        for root in bundle_roots:
            if not os.path.isdir(root):
                continue
            for version in sorted(os.listdir(root)):
                candidate = os.path.join(root, version, "models", "blobs", name)
                if os.path.isfile(candidate) and not os.path.islink(candidate):
                    return candidate
        return None

    def _take(self, source, name):
        """Link (same filesystem) or copy a file into the pool once it hashed to its name.
        The link must be the inode that was hashed: a file swapped meanwhile is not taken."""
        expected = name[len("sha256-"):]
        target = self.blob_path(name)
        try:
            with open_regular(source) as reader:
                hashed = os.fstat(reader.fileno())
                if sha256_reader(reader) != expected:
                    return False
        except (OSError, UnsafeFile):
            return False
        temporary = os.path.join(self.incoming, PARTIAL + name)
        self._unlink(temporary)
        try:
            os.link(source, temporary, follow_symlinks=False)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EROFS):
                raise
            try:
                copy_verified(source, target, expected, tmp_dir=self.incoming)
            except (ChecksumMismatch, UnsafeFile):
                return False
            os.chmod(target, 0o444)
            return True
        linked = os.lstat(temporary)
        if (linked.st_ino, linked.st_dev) != (hashed.st_ino, hashed.st_dev):
            self._unlink(temporary)
            return False
        os.rename(temporary, target)
        return True

    def receive(self, path, name):
        """Move a file fetched from a target into the pool once it hashed to its name.
        Returns its size; BackupError (and the file removed) when it does not match."""
        expected = name[len("sha256-"):] if check_blob(name) else ""
        try:
            actual = sha256_file(path)
        except (OSError, UnsafeFile) as error:
            raise BackupError("%s: %s" % (path, error)) from None
        if actual != expected:
            self._unlink(path)
            raise BackupError("blob %s arrived as sha256:%s: damaged on the target or on the way; "
                              "run the backup again" % (name, actual))
        size = os.stat(path).st_size
        os.chmod(path, 0o444)
        os.rename(path, self.blob_path(name))
        return size

    # --- sets ----------------------------------------------------------------------------

    def partial_path(self, name):
        if not SET_PATTERN.fullmatch(name or ""):
            raise BackupError("%r is not a set name (YYYYmmddTHHMMSSZ)" % (name,))
        return os.path.join(self.sets_dir, PARTIAL + name)

    def set_path(self, name):
        if not SET_PATTERN.fullmatch(name or ""):
            raise BackupError("%r is not a set name (YYYYmmddTHHMMSSZ)" % (name,))
        return os.path.join(self.sets_dir, name)

    @property
    def lock_path(self):
        return os.path.join(self.root, LOCK)

    def acquire(self, owner, name):
        """Take the store for one run (owner: run_owner()); refused while another live run has
        it. A lock whose run is gone is taken over."""
        self.ensure()
        record = dict(owner, set=name, since=datetime.datetime.now(
            datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for _attempt in range(3):
            if self._create_lock(record):
                return
            held = self.holder()
            if held.get("pid") == owner["pid"] and held.get("start") == owner["start"]:
                return
            if owner_alive(held):
                raise BackupError(
                    "another backup run (process %s, set %s, since %s) is writing to %s; "
                    "this run changed nothing. Let it finish (the timer's runs: "
                    "systemctl status gemma-airgap-backup), then run again"
                    % (held.get("pid"), held.get("set"), held.get("since"), self.root))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)  # its run is gone
        raise BackupError("could not take %s: other runs keep taking it" % self.lock_path)

    def _create_lock(self, record):
        """Put the lock in place, whole (a link of a written file: another run never reads a
        half-written one), when there is none; False when one is there."""
        partial = "%s.%d" % (self.lock_path, os.getpid())
        write_atomic(partial, json.dumps(record).encode(), 0o600)
        try:
            os.link(partial, self.lock_path)
        except FileExistsError:
            return False
        finally:
            os.unlink(partial)
        return True

    def holder(self):
        """What the lock says of the run that holds it ({} when none, or unreadable)."""
        try:
            held = json.loads(read_regular(self.lock_path, 4096))
        except (OSError, UnsafeFile, ValueError):
            return {}
        return held if isinstance(held, dict) else {}

    def release(self, owner):
        held = self.holder()
        if held.get("pid") == owner["pid"] and held.get("start") == owner["start"]:
            os.unlink(self.lock_path)

    def begin(self, name, owner=None):
        """The directory a new set is written in; refused when that set exists, or while
        another run writes to the store."""
        self.ensure()
        if owner is not None:
            self.acquire(owner, name)
        if os.path.exists(self.set_path(name)):
            raise BackupError("set %s exists already" % name)
        partial = self.partial_path(name)
        if not os.path.isdir(partial):
            os.makedirs(partial, 0o750)
        return partial

    def sets(self):
        """The sealed sets, oldest first."""
        if not os.path.isdir(self.sets_dir):
            return []
        return sorted(name for name in os.listdir(self.sets_dir)
                      if SET_PATTERN.fullmatch(name)
                      and os.path.isfile(os.path.join(self.sets_dir, name, SUMS)))

    def seal(self, name, hosts, meta):
        """Link each host's blobs into the set, write backup.json and SHA256SUMS, and make the
        set visible by renaming it. hosts: {host: {"blobs": [names], ...}}."""
        partial = self.partial_path(name)
        if not os.path.isdir(partial):
            raise BackupError("set %s was not begun (no %s)" % (name, partial))
        for host, record in sorted(hosts.items()):
            check_host(host)
            if not os.path.isfile(os.path.join(partial, host, "config.tar")):
                raise BackupError("set %s has no config.tar of %s" % (name, host))
            for blob in record.get("blobs", []):
                if not self.has_blob(blob):
                    raise BackupError("set %s: blob %s of %s is not in the pool"
                                      % (name, blob, host))
                self._link(self.blob_path(blob), os.path.join(partial, host, "blobs", blob))
        manifest = dict(meta, format=FORMAT, name=name, hosts=hosts)
        write_atomic(os.path.join(partial, MANIFEST),
                     (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        lines = []
        for relative in self._files(partial):
            base = os.path.basename(relative)
            if relative.split("/")[1:2] == ["blobs"] and BLOB_PATTERN.fullmatch(base):
                digest = base[len("sha256-"):]  # checked as it entered the pool
            else:
                digest = sha256_file(os.path.join(partial, relative))
            lines.append(sums_line(digest, relative))
        write_atomic(os.path.join(partial, SUMS), "".join(lines).encode())
        os.rename(partial, self.set_path(name))
        return self.set_path(name)

    @staticmethod
    def _link(source, target):
        directory = os.path.dirname(target)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o750)
        if not os.path.exists(target):
            os.link(source, target)

    @staticmethod
    def _files(top):
        """Every file under top, relative, sorted; a set holds nothing else."""
        found = []
        for directory, subdirectories, files in os.walk(top):
            subdirectories.sort()
            for entry in files:
                path = os.path.join(directory, entry)
                if os.path.islink(path) or not os.path.isfile(path):
                    raise BackupError("%s is not a regular file" % path)
                found.append(os.path.relpath(path, top).replace(os.sep, "/"))
        return sorted(name for name in found if name != SUMS)

    def manifest(self, name):
        try:
            return json.loads(read_regular(os.path.join(self.set_path(name), MANIFEST), SUMS_LIMIT))
        except (OSError, UnsafeFile, ValueError) as error:
            raise BackupError("set %s has no readable %s: %s" % (name, MANIFEST, error)) from None

    def verify(self, name):
        """Every problem of a sealed set, each naming its file ([] when it is whole): every
        file listed is read and hashed, and every file present must be listed."""
        top = self.set_path(name)
        if not os.path.isdir(top):
            raise BackupError("there is no set %s in %s" % (name, self.sets_dir))
        try:
            listed = parse_sums(read_regular(os.path.join(top, SUMS), SUMS_LIMIT).decode())
        except (OSError, UnsafeFile, ValueError, UnicodeDecodeError) as error:
            return ["%s: %s" % (SUMS, error)]
        problems, names = [], set()
        for entry, digest in listed:
            relative = relative_path(entry)
            if relative is None:
                problems.append("%s: a name outside the set" % entry)
                continue
            names.add(relative)
            try:
                actual = sha256_file(os.path.join(top, relative))
            except (OSError, UnsafeFile) as error:
                problems.append("%s: %s" % (relative, error))
                continue
            if actual != digest:
                problems.append("%s: checksum mismatch (expected sha256:%s, got sha256:%s)"
                                % (relative, digest, actual))
        try:
            present = set(self._files(top))
        except BackupError as error:
            return [*problems, str(error)]
        problems.extend("%s: not listed in %s" % (extra, SUMS) for extra in sorted(present - names))
        return problems

    # --- retention -----------------------------------------------------------------------

    def keep(self, keep_daily, keep_weekly):
        """The sets retention keeps: the newest of each of the last keep_daily days that have
        one, the newest of each of the last keep_weekly ISO weeks that have one, and always
        the newest set."""
        names = self.sets()
        kept = set(names[-1:])
        for key, count in ((lambda t: t.date(), keep_daily),
                           (lambda t: t.isocalendar()[:2], keep_weekly)):
            newest = {}
            for name in names:
                newest[key(set_time(name))] = name  # sorted: the last one of a period wins
            kept.update(sorted(newest.values())[-count:] if count > 0 else [])
        return kept

    def prune(self, keep_daily, keep_weekly, current=None):
        """Remove the sets retention does not keep, the partial sets of cut runs (never
        `current`'s), and the pool blobs no remaining set links to."""
        kept = self.keep(keep_daily, keep_weekly)
        removed = [name for name in self.sets() if name not in kept]
        for name in removed:
            shutil.rmtree(self.set_path(name))
        if os.path.isdir(self.sets_dir):
            for entry in os.listdir(self.sets_dir):
                if entry.startswith(PARTIAL) and entry != PARTIAL + (current or ""):
                    shutil.rmtree(os.path.join(self.sets_dir, entry))
                    removed.append(entry)
        freed = []
        if os.path.isdir(self.pool):
            for entry in sorted(os.listdir(self.pool)):
                path = os.path.join(self.pool, entry)
                if BLOB_PATTERN.fullmatch(entry) and os.lstat(path).st_nlink == 1:
                    freed.append((entry, os.lstat(path).st_size))
                    os.unlink(path)
        if os.path.isdir(self.incoming):
            for entry in os.listdir(self.incoming):
                self._unlink(os.path.join(self.incoming, entry))
        return removed, freed

    @staticmethod
    def _unlink(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
