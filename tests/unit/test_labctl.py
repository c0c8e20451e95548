"""Unit tests of the lab controller's decisions (no Docker engine needed)."""

import pytest

import labctl


def test_target_runs_without_privileged_and_with_every_listed_capability():
    config = labctl.LabConfig(prefix="t", targets=1)
    args = labctl.target_run_command(config, 1)
    assert "--privileged" not in args
    granted = [args[i + 1] for i, arg in enumerate(args) if arg == "--cap-add"]
    assert granted == list(labctl.TARGET_CAPABILITIES)
    # The kernel withholds CAP_SYS_RESOURCE: asking for it makes docker run fail.
    assert "SYS_RESOURCE" not in granted
    assert args[-2:] == [labctl.TARGET_IMAGE.tag, "/sbin/init"]


def test_target_is_attached_only_to_the_lab_network_with_its_labels():
    config = labctl.LabConfig(prefix="site", targets=2)
    args = labctl.target_run_command(config, 2)
    assert args[args.index("--network") + 1] == "site"
    assert args.count("--network") == 1
    assert args[args.index("--name") + 1] == "site-target-2"
    labels = [args[i + 1] for i, arg in enumerate(args) if arg == "--label"]
    assert labels == [f"{labctl.LABEL}=site", f"{labctl.ROLE_LABEL}=target"]
    assert "-p" not in args and "--publish" not in args


def test_target_image_carries_no_docker():
    # Docker must come from the bundle, not from the lab's base image.
    assert not any("docker" in package for package in labctl.TARGET_IMAGE.packages)
    command = labctl.debootstrap_command(labctl.TARGET_IMAGE, labctl.Path("/x"))
    assert command[:2] == ["debootstrap", "--variant=minbase"]
    assert "trixie" in command


@pytest.mark.parametrize("raw", ["0", "-1", "two"])
def test_bad_target_count_is_refused_with_the_variable_name(monkeypatch, raw):
    monkeypatch.setenv("LAB_TARGETS", raw)
    with pytest.raises(labctl.LabError, match="LAB_TARGETS"):
        labctl.LabConfig.from_env()


def test_failed_command_reports_the_command_and_its_output():
    with pytest.raises(labctl.LabError, match=r"(?s)command failed \(3\).*boom"):
        labctl.run(["sh", "-c", "echo boom >&2; exit 3"])
