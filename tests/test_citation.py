"""CITATION.cff and LICENSE agree with pyproject.toml and name the paper the artifact reproduces."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_citation_matches_the_project_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["message"]
    assert cff["version"] == project["version"]
    assert cff["license"] == project["license"]["text"] == "Apache-2.0"
    assert cff["authors"] == [{"name": "The repro authors"}]
    paper = cff["preferred-citation"]
    arxiv = re.search(r"arXiv (\d{4}\.\d{5})", project["description"])[1]
    assert {"type": "other", "value": f"arXiv:{arxiv}", "description": "the arXiv preprint"} in paper["identifiers"]
    assert paper["url"] == f"https://arxiv.org/abs/{arxiv}"
    assert paper["type"] == "conference-paper" and paper["year"] == 2024 and (paper["start"], paper["end"]) == (10166, 10170)
    assert [a["family-names"] for a in paper["authors"]] == ["Ashihara", "Delcroix", "Moriya", "Matsuura", "Asami", "Ijima"]
    assert paper["title"].startswith("What Do Self-Supervised Speech and Speaker Models Learn?")


def test_license_is_the_apache_2_0_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 202
