"""Environment variables set for a while are put back as they were: set ones to their values, unset
ones unset (repro/util/environ.py, and the rehearsal's environment built on it)."""

import os

from repro.rehearse.runner import rehearsal_environment
from repro.util.environ import restore_environ, saved_environ


def test_set_variables_get_their_values_back_and_unset_ones_are_unset_again(monkeypatch):
    monkeypatch.setenv("REPRO_TEST_SET", "before")
    monkeypatch.delenv("REPRO_TEST_UNSET", raising=False)
    saved = saved_environ(("REPRO_TEST_SET", "REPRO_TEST_UNSET"))
    assert saved == {"REPRO_TEST_SET": "before", "REPRO_TEST_UNSET": None}
    os.environ["REPRO_TEST_SET"] = "during"
    os.environ["REPRO_TEST_UNSET"] = "during"
    restore_environ(saved)
    assert os.environ["REPRO_TEST_SET"] == "before" and "REPRO_TEST_UNSET" not in os.environ


def test_the_rehearsal_environment_adds_its_registry_and_data_root_then_leaves_both_as_they_were(
        monkeypatch, tmp_path):
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", "/a/models.yaml")
    monkeypatch.delenv("REPRO_DATA", raising=False)
    with rehearsal_environment(tmp_path / "models.yaml", tmp_path / "data"):
        assert os.environ["REPRO_MODEL_REGISTRY"] == os.pathsep.join(["/a/models.yaml", str(tmp_path / "models.yaml")])
        assert os.environ["REPRO_DATA"] == str(tmp_path / "data")
    assert os.environ["REPRO_MODEL_REGISTRY"] == "/a/models.yaml" and "REPRO_DATA" not in os.environ
