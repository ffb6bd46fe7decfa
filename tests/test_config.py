from pathlib import Path

import pytest

from repro.config import ConfigError, iter_settings, load_profile, profile_names


def test_builtin_profiles_load():
    assert {"smoke", "fast", "full"} <= set(profile_names())
    smoke = load_profile("smoke")
    assert smoke.corpus.kind == "synthetic"
    assert smoke.corpus.synthetic.speakers >= 30
    fast, full = load_profile("fast"), load_profile("full")
    assert fast.name == "fast" and full.name == "full"
    # fast extends full: settings not overridden are inherited
    assert fast.extraction == full.extraction
    assert fast.models == full.models


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = "name: x\ndescription: d\nseed: 1\ncorpus: {kind: synthetic}\ntasks: []\n"


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    path = write(tmp_path, BASE + "extraction: {dtyp: float16}\n")
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    msg = str(err.value)
    assert str(path) in msg and "extraction.dtyp" in msg and "dtype" in msg and "max_batch_seconds" in msg


def test_wrong_type_and_literal(tmp_path):
    with pytest.raises(ConfigError, match=r"seed' must be an integer, got str 'one'"):
        load_profile(write(tmp_path, BASE.replace("seed: 1", "seed: one")))
    with pytest.raises(ConfigError, match=r"extraction.dtype' is 'float64'; allowed values: 'float16', 'float32'"):
        load_profile(write(tmp_path, BASE + "extraction: {dtype: float64}\n"))
    with pytest.raises(ConfigError, match=r"tasks\[1\]' is 'ASR'"):
        load_profile(write(tmp_path, BASE + "tasks: [PR, ASR]\n"))


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "name: x\ndescription: d\ncorpus: {kind: synthetic}\n")
    with pytest.raises(ConfigError, match=r"missing required key 'seed'"):
        load_profile(path)


def test_extends_merges_and_detects_cycles(tmp_path):
    write(tmp_path, BASE + "extraction: {dtype: float16, max_batch_seconds: 10}\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nname: child\nextraction: {max_batch_seconds: 5}\n", "child.yaml")
    cfg = load_profile(child)
    assert cfg.name == "child" and cfg.extraction.dtype == "float16" and cfg.extraction.max_batch_seconds == 5.0
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_profile(tmp_path / "a.yaml")


def test_tasks_need_a_probing_budget(tmp_path):
    from repro.probing.runner import require_budgets

    profile = load_profile(write(tmp_path, BASE + "tasks: [KS]\n"))
    with pytest.raises(ConfigError, match=r"profile x: tasks \['KS'\] have no budget under 'probing.tasks'"):
        require_budgets(profile, profile.tasks)


def test_unknown_profile_lists_builtin():
    with pytest.raises(ConfigError, match="smoke"):
        load_profile("nonexistent")


def test_every_open_setting_has_a_reason():
    settings = list(iter_settings(load_profile("full")))
    open_ones = [s for s in settings if s[3]]
    assert len(open_ones) >= 5
    for key, _value, reason, _open in settings:
        assert len(reason) > 15, key
