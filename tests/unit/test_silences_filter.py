"""silences_to_restore: which of a backup's silences a restore posts again."""

from __future__ import annotations

from silences import silences_to_restore

NOW = "2026-11-29T12:00:00Z"
DISK = [{"name": "alertname", "value": "DiskFilling", "isRegex": False, "isEqual": True}]
GPU = [{"name": "alertname", "value": "GpuHot", "isRegex": False, "isEqual": True},
       {"name": "instance", "value": "t1", "isRegex": False, "isEqual": True}]


def silence(matchers, ends, comment="disk swap", state="active", **more):
    return {"id": more.pop("id", "x"), "matchers": matchers, "startsAt": "2026-11-29T10:00:00Z",
            "endsAt": ends, "createdBy": "ops", "comment": comment, "status": {"state": state},
            "updatedAt": "2026-11-29T10:00:00Z", **more}


def test_a_fresh_alertmanager_gets_every_silence_still_in_force_as_a_new_one():
    backed_up = [silence(DISK, "2026-11-30T00:00:00Z"),
                 silence(GPU, "2026-11-29T11:59:59Z", "ended an instant ago"),
                 silence(GPU, "2026-12-01T00:00:00.000+09:00", "Seoul time")]
    posted = silences_to_restore(backed_up, [], NOW)
    assert [s["comment"] for s in posted] == ["disk swap", "Seoul time"]
    # Only what the API takes for a new silence: no id (one it lacks is refused), no status.
    assert all(set(s) == {"matchers", "startsAt", "endsAt", "createdBy", "comment"}
               for s in posted)


def test_a_silence_in_force_there_already_under_another_id_is_not_posted_twice():
    backed_up = [silence(GPU, "2026-11-30T00:00:00Z", id="old")]
    held = [silence(list(reversed(GPU)), "2026-11-30T00:00:00.000Z", id="new")]  # any order
    assert silences_to_restore(backed_up, held, NOW) == []


def test_an_expired_or_different_silence_there_does_not_hold_it_back():
    backed_up = [silence(DISK, "2026-11-30T00:00:00Z")]
    assert len(silences_to_restore(backed_up, [silence(DISK, "x", state="expired")], NOW)) == 1
    assert len(silences_to_restore(backed_up, [silence(GPU, "2026-11-30T00:00:00Z")], NOW)) == 1
    assert len(silences_to_restore(backed_up, [silence(DISK, "2026-11-30T00:00:00Z",
                                                       comment="another reason")], NOW)) == 1
    assert silences_to_restore(backed_up, [silence(DISK, "x", state="pending")], NOW) == []


def test_hostile_or_broken_entries_are_passed_over():
    backed_up = ["text", None, {"matchers": DISK}, silence(DISK, "not a time"),
                 silence(DISK, 12), silence("not a list", "2026-11-30T00:00:00Z"),
                 silence([], "2026-11-30T00:00:00Z"), silence(["x"], "2026-11-30T00:00:00Z"),
                 silence(DISK, "2026-11-30T00:00:00Z"), silence(DISK, "2026-11-30T00:00:00Z")]
    posted = silences_to_restore(backed_up, [None, "x", {"status": None}], NOW)
    # The broken ones are dropped (Alertmanager would refuse them, and the restore with them);
    # the one listed twice is posted once.
    assert [s["matchers"] for s in posted] == [DISK]
