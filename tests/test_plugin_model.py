"""A model given as `path/to/file.py:factory` behaves like a registered one: its outputs land in the
profile's folders under one safe name, the paper stage reads them, and its family is the profile's."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from click.testing import CliRunner

from repro.cli import main
from repro.config import ConfigError, load_profile
from repro.models.registry import family_of
from repro.paper.results import ResultReader, models_by_family
from repro.workspace import Workspace, model_folder

PROFILE = """
name: plugin
description: a user's model given as a file
seed: 0
corpus: {{kind: synthetic}}
models: {{speech_ssl: [], speaker_ssl: ["{ref}"], speaker_sup: []}}
tasks: [KS]
extraction: {{device: cpu, max_batch_seconds: 16}}
probing:
  device: cpu
  head_dim: 16
  tasks:
    KS: {{steps: 4, batch_size: 4, lr_grid: [0.01], eval_every: 2}}
cka: {{task: KS, device: cpu}}
"""


def test_model_folder_names_are_safe_and_distinct():
    assert model_folder("tiny-wavlm") == "tiny-wavlm"
    a, b = model_folder("/home/me/models/m.py:build"), model_folder("/home/you/models/m.py:build")
    assert a.startswith("m.py_build-") and b.startswith("m.py_build-") and a != b
    assert "/" not in a and ":" not in a and model_folder("../x.py:f") != ".."


def test_a_plugin_model_is_extracted_probed_and_read_in_the_profile_folders(tmp_path, workspace_env, hf_folder,
                                                                           tiny_corpus):
    user = tmp_path / "user"
    user.mkdir()
    (user / "my_model.py").write_text(
        "from repro.models.hf_ssl import load_hf_ssl\n\n\n"
        f"def build():\n    return load_hf_ssl({str(hf_folder('hubert'))!r})\n")
    ref = f"{user / 'my_model.py'}:build"
    prof = tmp_path / "plugin.yaml"
    prof.write_text(PROFILE.format(ref=ref))
    ws = Workspace.for_profile(str(prof))
    shutil.copytree(tiny_corpus, ws.corpus_dir)
    res = CliRunner().invoke(main, ["run", "--profile", str(prof), "--quiet", "--stage", "features",
                                    "--stage", "probe", "--stage", "cka"])
    assert res.exit_code == 0, res.output
    written = [p for p in user.rglob("*") if p.suffix != ".pyc" and p.name not in ("my_model.py", "__pycache__")]
    assert not written and not list(tmp_path.glob("*:build*"))  # nothing lands beside the user's file
    folder = model_folder(ref)
    assert (ws.results / "probing" / folder / "KS" / "best.json").is_file()
    assert (ws.features_dir / folder / "KS" / "train" / "meta.json").is_file()
    assert (ws.results / "cka" / f"{folder}__{folder}.npz").is_file()
    assert ResultReader(ws).probe(ref, "KS")["model"] == ref
    assert models_by_family(ws)["speaker_ssl"] == [ref] and family_of(ws.profile, ref) == "speaker_ssl"


def test_a_registered_model_in_another_family_list_is_refused():
    smoke = load_profile("smoke")
    wrong = dataclasses.replace(smoke, models=dataclasses.replace(smoke.models, speech_ssl=["tiny-wavlm", "tiny-ecapa-sup"],
                                                                  speaker_sup=[]))
    with pytest.raises(ConfigError, match="listed under models.speech_ssl, but its registry entry says family "
                                          "'speaker_sup'"):
        family_of(wrong, "tiny-ecapa-sup")
    speech = smoke.models.speech_ssl[0]
    twice = dataclasses.replace(smoke, models=dataclasses.replace(smoke.models, speaker_ssl=[speech]))
    with pytest.raises(ConfigError, match="exactly one of"):
        family_of(twice, speech)


# --- display names: short names in tables and figures, full names in the provenance --------------

LONG_FOLDER = "a research group's models/experiments of the autumn, with long names/checkpoints-2026-11"


def _long_plugins(tmp_path) -> tuple[str, str]:
    folder = tmp_path / LONG_FOLDER
    return (f"{folder}/speech_model.py:wavlm_base_plus_finetuned_for_emotion_recognition_on_acted_speech",
            f"{folder}/speaker_model.py:ecapa_tdnn_self_supervised_with_dino_on_voxceleb2_development_set")


def _paper_results(tmp_path, speech: list[str], speaker_ssl: list[str], speaker_sup: list[str]) -> Workspace:
    """A workspace whose profile lists these models, with every result the paper stage reads."""
    import numpy as np

    from repro.provenance import asv_idt_key, cka_key
    from repro.util.atomic import atomic_write_json
    from test_paper import TASKS, peaked, write_probe

    smoke = load_profile("smoke")
    profile = dataclasses.replace(smoke, models=dataclasses.replace(
        smoke.models, speech_ssl=speech, speaker_ssl=speaker_ssl, speaker_sup=speaker_sup))
    ws = Workspace(profile, tmp_path / "work", tmp_path / "results", tmp_path / "figures")
    layers = {m: [f"L{i}" for i in range(13)] for m in speech}
    layers.update({m: ["tdnn", "res2net1", "res2net2", "res2net3", "mfa"] for m in speaker_ssl + speaker_sup})
    for m, names in layers.items():
        for k, t in enumerate(TASKS):
            write_probe(ws, m, t, {"PR": 0.2, "ASV": 0.1}.get(t, 0.7), peaked(len(names), k % len(names)), names)
        atomic_write_json(ws.asv_idt_file(m), {"model": m, "task": "ASV-IDT", "metric": "eer", "test": 0.2, "dev": 0.2,
                                               "provenance": {"format": 1, "settings": asv_idt_key(profile, m),
                                                              "inputs": {}}})
    models = profile.models.all()
    for i, a in enumerate(models):
        for b in models[i:]:
            cka = np.linspace(0, 1, len(layers[a]) * len(layers[b])).reshape(len(layers[a]), len(layers[b]))
            atomic_write_json(ws.cka_file(a, b, "json"), {
                "cka": cka.tolist(), "layers": {"a": layers[a], "b": layers[b]},
                "provenance": {"format": 1, "settings": cka_key(profile, a, b), "inputs": {}}})
    return ws


def _drawn_labels(fig) -> list[tuple[str, object]]:
    """(description, window extent) of every title, axis label and drawn tick label of `fig`, drawn again
    on its own Agg canvas as it was saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    out = []
    for i, ax in enumerate(fig.axes):
        texts = [("title", ax.title), ("x label", ax.xaxis.label), ("y label", ax.yaxis.label)]
        for axis, name in ((ax.xaxis, "x tick"), (ax.yaxis, "y tick")):
            low, high = sorted(axis.get_view_interval())
            texts += [(name, t) for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
                      if low - 1e-9 <= loc <= high + 1e-9]  # ticks outside the limits are not drawn
        out += [(f"axes {i} {kind} {t.get_text()!r}", t.get_window_extent(renderer))
                for kind, t in texts if t.get_text() and t.get_visible()]
    return out


@pytest.mark.slow
def test_figures_with_two_long_named_plugins_have_labels_that_neither_overlap_nor_leave_the_figure(
        tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from repro.paper.registry import render_output

    speech, speaker = _long_plugins(tmp_path)
    ws = _paper_results(tmp_path, ["tiny-wavlm-mp", speech], [speaker], ["tiny-ecapa-sup"])
    drawn = []
    close = plt.close

    def keep(fig=None):  # the figures as saved, kept to be measured
        if fig is not None and not isinstance(fig, str):
            drawn.append(fig)
        return close(fig)

    monkeypatch.setattr(plt, "close", keep)
    for fig_id in ("figure-1", "figure-2", "figure-3", "figure-4"):
        before = len(drawn)
        render_output(ws, fig_id)
        for fig in drawn[-1:] if len(drawn) > before else []:  # the output is closed last, after the copies
            labels = _drawn_labels(fig)
            frame = fig.bbox
            assert any("wavlm_base_plus" in name or "ecapa_tdnn_self" in name for name, _ in labels), fig_id
            for name, box in labels:
                assert (box.x0 >= frame.x0 - 0.5 and box.y0 >= frame.y0 - 0.5 and box.x1 <= frame.x1 + 0.5
                        and box.y1 <= frame.y1 + 0.5), f"{fig_id}: {name} leaves the figure"
            for k, (a, box_a) in enumerate(labels):
                for b, box_b in labels[k + 1:]:
                    overlap_x = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
                    overlap_y = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
                    assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{fig_id}: {a} overlaps {b}"
    table = (ws.figures / "table-1.csv").read_text() if render_output(ws, "table-1") else ""
    assert "wavlm_base_plus_finetuned_for_emotion_recognition_on_acted_speech" in table
    assert LONG_FOLDER not in table and "speech_model.py" not in table
    assert ResultReader(ws).probe(speech, "KS")["model"] == speech  # the full name stays in the results


def test_plugins_whose_short_names_collide_are_told_apart_with_one_notice(tmp_path, capsys):
    from repro.models.registry import display_names
    from repro.paper.registry import render_output

    a, b, c = (f"{tmp_path}/{d}/{f}.py:build" for d, f in (("x", "model"), ("y", "model"), ("z", "wavlm")))
    assert display_names(["tiny-hubert", f"{tmp_path}/m.py:my_wavlm"]) == {
        "tiny-hubert": "tiny-hubert", f"{tmp_path}/m.py:my_wavlm": "my_wavlm"}  # no collision, no notice
    assert capsys.readouterr().err == ""
    ws = _paper_results(tmp_path, [a, b, c], ["tiny-ecapa-dino"], [])
    render_output(ws, "table-1")
    render_output(ws, "table-2")
    rows = [line.split(",")[0] for line in (ws.figures / "table-1.csv").read_text().splitlines()[1:]]
    assert rows == ["model-1", "model-2", "wavlm", "tiny-ecapa-dino"]
    assert {line.split(",")[0] for line in (ws.figures / "table-2.csv").read_text().splitlines()[1:]} == set(rows)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"notice: models whose short names collide are told apart in tables and figures: "
                   f"model-1 = {a}; model-2 = {b}; wavlm = {c}"]
