"""mount_for_path: the filesystem a path will be written on, from mount facts."""

import pytest
from mount_for_path import mount_for_path

MOUNTS = [
    {"mount": "/", "size_available": 100},
    {"mount": "/opt", "size_available": 200},
    {"mount": "/opt/gemma-airgap/releases", "size_available": 300},
    {"mount": "/var/lib/docker", "size_available": 400},
]


def free(path, mounts=MOUNTS):
    return mount_for_path(mounts, path).get("size_available")


@pytest.mark.parametrize(("path", "expected"), [
    ("/opt/gemma-airgap/releases", 300),       # the mount point itself
    ("/opt/gemma-airgap/releases/2026.1", 300),  # below it
    ("/opt/gemma-airgap/releases-old", 200),   # a sibling sharing a prefix of characters
    ("/opt/gemma-airgap", 200),
    ("/optical/data", 100),                    # "/opt" must not claim "/optical"
    ("/opt", 200),
    ("/srv/bundles", 100),                     # "/" holds everything else
    ("/", 100),
])
def test_the_longest_mount_point_that_is_a_whole_component_prefix_wins(path, expected):
    assert free(path) == expected


def test_paths_are_compared_normalised():
    assert free("/opt/gemma-airgap/releases/") == 300
    assert free("/opt//gemma-airgap/./releases") == 300
    assert free("/opt/gemma-airgap/releases/../x") == 200
    assert free("//opt") == 200
    trailing = [{"mount": "/", "size_available": 1}, {"mount": "/data/", "size_available": 2}]
    assert free("/data/x", trailing) == 2


def test_mount_facts_keyed_by_mount_point_are_accepted():
    keyed = {m["mount"]: m for m in MOUNTS}
    assert free("/opt/gemma-airgap/releases/x", keyed) == 300
    assert free("/optical", keyed) == 100


def test_the_last_of_stacked_mounts_on_one_point_is_the_one_written_to():
    stacked = [*MOUNTS, {"mount": "/opt", "size_available": 999}]
    assert free("/opt/other", stacked) == 999


def test_no_mount_holding_the_path_gives_an_empty_dict():
    assert mount_for_path([{"mount": "/data", "size_available": 5}], "/opt/x") == {}
    assert mount_for_path([], "/opt") == {}
    assert mount_for_path(None, "/opt") == {}
    # Entries without a usable mount point (ansible_mounts can hold 'N/A') are skipped.
    assert mount_for_path(["N/A", {"device": "x"}, {"mount": "none"}], "/opt") == {}


def test_a_relative_path_is_refused():
    with pytest.raises(ValueError, match="absolute path"):
        mount_for_path(MOUNTS, "opt/gemma-airgap")
    with pytest.raises(ValueError):
        mount_for_path(MOUNTS, None)
