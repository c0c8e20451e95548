# -*- coding: utf-8 -*-
# gemma-airgap: one line naming the licences of a bundle's models.

"""Jinja filter ``license_summary``.

bundle.json records, per model, its licence file under LICENSES/ (none when the model has no
licence layer) and the licences' titles (model_licenses). prepare's summary and deploy's name
them in one line, e.g. ``gemma3n:e4b: Gemma Terms of Use (<dir>/gemma3n_e4b.txt)``. Records
come from a bundle, so anything not shaped as expected is named as unreadable, never trusted.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def _one(record, directory):
    if not isinstance(record, dict) or not isinstance(record.get("model"), str):
        return "(an unreadable licence record)"
    titles = [t for t in record.get("titles") or [] if isinstance(t, str) and t]
    if not isinstance(record.get("file"), str) or not record["file"]:
        return "%s: no licence in the model" % record["model"]
    return "%s: %s (%s/%s)" % (record["model"], " + ".join(titles) or "untitled",
                               directory.rstrip("/"), record["file"])


def license_summary(records, directory="LICENSES"):
    """'model: titles (directory/file); ...', or 'none recorded' for a bundle without them."""
    if not isinstance(records, list) or not records:
        return "none recorded"
    return "; ".join(_one(record, directory) for record in records)


class FilterModule(object):
    def filters(self):
        return {"license_summary": license_summary}
