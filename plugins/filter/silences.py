# -*- coding: utf-8 -*-
# gemma-airgap: which of a backup's Alertmanager silences a restore posts again.

"""Jinja filter ``silences_to_restore``.

A silence posted again gets a new id, so a restore cannot tell by id whether an earlier
restore (or the same Alertmanager, never lost) holds it already. A silence is the same when
it silences the same alerts for the same reason: equal matchers (in any order), comment and
author. Only those still in force and not held in force already are posted, with the fields
Alertmanager's API takes for a new silence.
"""

from __future__ import absolute_import, division, print_function

import datetime
import json

__metaclass__ = type

POSTED = ("matchers", "startsAt", "endsAt", "createdBy", "comment")
IN_FORCE = ("active", "pending")


def _moment(text):
    """An RFC 3339 time from Alertmanager as an aware datetime (None when unreadable)."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _same(silence):
    matchers = silence.get("matchers") if isinstance(silence.get("matchers"), list) else []
    return (sorted(json.dumps(m, sort_keys=True) for m in matchers),
            silence.get("comment"), silence.get("createdBy"))


def silences_to_restore(backed_up, held, now=None):
    """The backed-up silences to post: ending after now, and not in force in held already."""
    now = _moment(now) if now else datetime.datetime.now(datetime.timezone.utc)
    in_force = [_same(s) for s in held or [] if isinstance(s, dict)
                and (s.get("status") or {}).get("state") in IN_FORCE]
    chosen = []
    for silence in backed_up or []:
        if not isinstance(silence, dict):
            continue
        matchers = silence.get("matchers")
        if not (isinstance(matchers, list) and matchers
                and all(isinstance(m, dict) for m in matchers)):
            continue  # Alertmanager would refuse it, and the restore with it
        ends = _moment(silence.get("endsAt"))
        if ends is None or ends <= now or _same(silence) in in_force:
            continue
        in_force.append(_same(silence))  # a backup holding it twice posts it once
        chosen.append({key: silence[key] for key in POSTED if key in silence})
    return chosen


class FilterModule(object):
    def filters(self):
        return {"silences_to_restore": silences_to_restore}
