"""license_summary: the one line prepare and deploy print about the models' licences."""

from __future__ import annotations

import pytest
from licenses import license_summary

RECORDS = [
    {"model": "gemma3n:e4b", "file": "gemma3n_e4b.txt", "titles": ["Gemma Terms of Use"],
     "gemma": True},
    {"model": "lab/tiny:v1", "file": "lab__tiny_v1.txt", "titles": ["Apache License", "MIT"]},
    {"model": "plain:latest", "file": None, "titles": []},
]


def test_each_model_is_named_with_its_licences_and_where_they_are():
    assert license_summary(RECORDS, "/opt/gemma-airgap/releases/r1/LICENSES/") == (
        "gemma3n:e4b: Gemma Terms of Use (/opt/gemma-airgap/releases/r1/LICENSES/gemma3n_e4b.txt);"
        " lab/tiny:v1: Apache License + MIT (/opt/gemma-airgap/releases/r1/LICENSES/"
        "lab__tiny_v1.txt); plain:latest: no licence in the model")


@pytest.mark.parametrize("records", [None, [], "text", {"model": "x"}])
def test_a_bundle_without_records_says_so(records):
    assert license_summary(records) == "none recorded"


def test_hostile_records_are_named_unreadable_not_trusted():
    odd = [42, {"model": ["x"]}, {"model": "m", "file": "f.txt", "titles": [{"x": 1}, ""]}]
    assert license_summary(odd) == ("(an unreadable licence record); (an unreadable licence "
                                    "record); m: untitled (LICENSES/f.txt)")
