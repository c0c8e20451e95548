# -*- coding: utf-8 -*-
# gemma-airgap: which mounted filesystem a path (existing or not yet) will live on.

"""Jinja filter ``mount_for_path``.

Preflight checks (host_preflight on a target, bundle preflight on the staging host) need
the free space where a directory *will* be written, before it exists. Mount facts give each
filesystem's free bytes; the path lies on the mount whose mount point is its longest
prefix, compared by whole path components, so ``/opt`` never claims ``/optical``.

The path is matched as written: symlinks along it are not resolved (the facts come from
the target, this filter runs on the control node), so a release root under a symlinked
directory is measured on the filesystem of the link, not of where it points.
"""

from __future__ import absolute_import, division, print_function

import posixpath

__metaclass__ = type


def _contains(mount_point, path):
    """Whether path is mount_point itself or lies below it (component-wise)."""
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point + "/")


def _normal(path):
    # normpath keeps a leading "//" (POSIX allows it a meaning); targets have none.
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("/") else normal


def mount_for_path(mounts, path):
    """The mount (a dict of mount facts) that path lies on, or {} when none holds it.

    mounts: a list of mount dicts with a ``mount`` key (``ansible_mounts``) or a dict of
    them keyed by mount point (``mount_points`` of ansible.builtin.mount_facts). In a list,
    a later entry for the same mount point wins: /proc/mounts lists mounts in the order
    they were made, so the last one is the one on top, the one a write reaches.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("mount_for_path needs an absolute path, got %r" % (path,))
    entries = list(mounts.values()) if isinstance(mounts, dict) else list(mounts or [])
    target = _normal(path)
    best, best_length = {}, -1
    for entry in entries:
        point = entry.get("mount") if isinstance(entry, dict) else None
        if not isinstance(point, str) or not point.startswith("/"):
            continue
        point = _normal(point)
        if _contains(point, target) and len(point) >= best_length:
            best, best_length = entry, len(point)
    return best


class FilterModule(object):
    def filters(self):
        return {"mount_for_path": mount_for_path}
