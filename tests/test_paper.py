import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from repro.cli import main
from repro.config import load_profile
from repro.paper import checksums
from repro.paper.claims import compare_references, evaluate_claims
from repro.paper.registry import OUTPUTS, UnknownOutputError, get, render_output
from repro.paper.results import ConfigMismatchError, MissingResultsError
from repro.provenance import asv_idt_key, probe_key
from repro.util.atomic import atomic_write_json
from repro.workspace import Workspace

SPEECH, SPK_SSL, SPK_SUP = ["tiny-wavlm-mp", "tiny-hubert-mp"], ["tiny-ecapa-dino"], ["tiny-ecapa-sup"]
TASKS = ["PR", "KS", "IC", "SID", "ASV", "ER"]


@pytest.fixture
def ws(tmp_path):
    return Workspace(load_profile("smoke"), tmp_path / "work", tmp_path / "results", tmp_path / "figures")


def peaked(n, at, height=6.0):
    w = np.ones(n)
    w[at] = height
    return (w / w.sum()).tolist()


def write_probe(ws, model, task, test, weights, layers, contributions=None, dev=None):
    metric = {"PR": "per", "ASV": "eer"}.get(task, "accuracy")
    lr = ws.profile.probing.tasks[task].lr_grid[0]
    rec = {"model": model, "task": task, "lr": lr, "selected_lr": lr, "metric": metric,
           "higher_is_better": metric == "accuracy", "dev": test if dev is None else dev, "test": test,
           "layers": layers, "layer_weights": weights, "contributions": contributions or weights,
           "sweep": [{"lr": lr, "dev": test, "test": test}],
           "provenance": {"format": 1, "settings": probe_key(ws.profile, model, task, None), "inputs": {}}}
    atomic_write_json(ws.probe_dir(model, task) / "best.json", rec)


def write_paper_like(ws, invert=False):
    """Results shaped like the paper's findings (or their opposite with `invert`)."""
    ssl_layers = [f"L{i}" for i in range(13)]
    ecapa_layers = ["tdnn", "res2net1", "res2net2", "res2net3", "mfa"]
    for m in SPEECH:
        for t in TASKS:
            at = {"PR": 8, "KS": 7, "IC": 9, "SID": 3, "ASV": 3, "ER": 5}[t]
            if invert and t == "PR":
                at = 1
            test = {"PR": 0.08, "ASV": 0.06}.get(t, 0.9)
            write_probe(ws, m, t, test, peaked(13, at), ssl_layers)
    for m in SPK_SSL + SPK_SUP:
        for t in TASKS:
            at = 4 if invert else 0
            test = {"PR": 0.45, "ASV": 0.03}.get(t, 0.6)
            if t in ("SID", "ASV"):
                test = 0.95 if t == "SID" else 0.03
            write_probe(ws, m, t, test, peaked(5, at, 3.0), ecapa_layers)
    for m in SPEECH + SPK_SSL + SPK_SUP:
        atomic_write_json(ws.asv_idt_file(m),
                          {"model": m, "task": "ASV-IDT", "metric": "eer", "test": 0.2, "dev": 0.2,
                           "provenance": {"format": 1, "settings": asv_idt_key(ws.profile, m), "inputs": {}}})


def test_registry_ids_are_unique_and_described():
    ids = [o.id for o in OUTPUTS]
    assert len(ids) == len(set(ids)) and {"table-1", "figure-1", "figure-2", "figure-3", "figure-4"} <= set(ids)
    for o in OUTPUTS:
        assert o.title and o.shows and o.reads and o.writes
    with pytest.raises(UnknownOutputError, match="registered: table-1"):
        get("figure-99")


def test_figures_and_loss_plots_do_not_follow_what_the_process_drew_before(ws, tmp_path):
    """A figure and a training-loss plot drawn again after the process changed matplotlib's settings
    (as another figure's style, a test or a user's matplotlibrc would) keep their bytes, and the
    process's settings are left as they were."""
    import matplotlib

    from repro.trainlog import plot_log

    write_paper_like(ws)
    rows = [{"step": s, "loss": 3.0 / s} for s in range(1, 20)] + [{"step": 10, "eer": 0.2}]

    def draw() -> dict[str, bytes]:
        plot_log(rows, tmp_path / "loss.png", "a model (dino): loss and EER")
        files = {p.name: p.read_bytes() for p in render_output(ws, "figure-1")}
        return {**files, "loss.png": (tmp_path / "loss.png").read_bytes()}

    first = draw()
    with matplotlib.rc_context({"lines.linewidth": 4.0, "font.size": 15, "axes.grid": True, "savefig.dpi": 50}):
        again = draw()
        assert matplotlib.rcParams["font.size"] == 15  # restored after each drawing
    assert again == first and {"figure-1.png", "figure-1.pdf", "loss.png"} <= set(first)


def test_missing_results_name_the_files_and_the_target(ws):
    with pytest.raises(MissingResultsError) as err:
        render_output(ws, "figure-1")
    msg = str(err.value)
    assert "figure-1 needs result files" in msg
    assert str(ws.probe_dir("tiny-wavlm-mp", "PR") / "best.json") in msg
    assert "make probe PROFILE=smoke" in msg


def test_results_from_another_config_are_refused(ws):
    write_paper_like(ws)
    path = ws.probe_dir("tiny-wavlm-mp", "KS") / "best.json"
    data = json.loads(path.read_text())
    data["provenance"]["settings"] = "0123456789abcdef"
    path.write_text(json.dumps(data))
    expected = probe_key(ws.profile, "tiny-wavlm-mp", "KS", None)
    with pytest.raises(ConfigMismatchError, match=f"0123456789abcdef.*{expected}"):
        render_output(ws, "table-1")


@pytest.mark.slow
def test_tables_and_figures_are_byte_stable(ws, tmp_path):
    write_paper_like(ws)
    first = {}
    for oid in ("table-1", "table-2", "figure-1", "figure-2"):
        for p in render_output(ws, oid):
            first[p.name] = p.read_bytes()
    assert {"table-1.csv", "table-1.md", "table-1.tex", "figure-1.pdf", "figure-1.png"} <= set(first)
    for oid in ("table-1", "table-2", "figure-1", "figure-2"):
        for p in render_output(ws, oid):
            assert p.read_bytes() == first[p.name], p.name
    table = (ws.figures / "table-1.md").read_text()
    assert "| tiny-wavlm-mp | speech SSL | 8.00 | 90.00 |" in table
    assert b"CreationDate" not in first["figure-1.pdf"]
    assert r"\toprule" in (ws.figures / "table-1.tex").read_text()


def test_claims_pass_on_paper_like_results_and_fail_on_the_opposite(ws, tmp_path):
    write_paper_like(ws)
    outcomes = {c.id: c for c in evaluate_claims(ws)}
    for cid in ("C2a", "C2b", "C3a", "C3b", "C4a", "C4b"):
        assert outcomes[cid].status == "PASS", (cid, outcomes[cid].value)
    assert outcomes["C3c"].status == "NOT-RUN" and "make cka" in outcomes["C3c"].value
    ws2 = dataclasses.replace(ws, results_root=tmp_path / "inverted")
    write_paper_like(ws2, invert=True)
    inverted = {c.id: c for c in evaluate_claims(ws2)}
    for cid in ("C2b", "C4a", "C4b"):
        assert inverted[cid].status == "FAIL", (cid, inverted[cid].value)


def test_claims_without_speaker_ssl_are_not_run(ws):
    prof = dataclasses.replace(ws.profile, models=dataclasses.replace(ws.profile.models, speaker_ssl=[]))
    w = dataclasses.replace(ws, profile=prof)
    write_paper_like(w)
    outcomes = {c.id: c for c in evaluate_claims(w)}
    assert outcomes["C3a"].status == "NOT-RUN" and "no speaker ssl model" in outcomes["C3a"].value
    assert outcomes["C2a"].status == "PASS"


def test_reference_comparison(ws, tmp_path):
    refs = tmp_path / "refs.yaml"
    refs.write_text("superb:\n  source: test\n  values:\n"
                    "    - {model: tiny-wavlm-mp, task: PR, value: 8.5, tolerance: 1.0}\n"
                    "    - {model: tiny-hubert-mp, task: PR, value: 3.0, tolerance: 1.0}\n"
                    "    - {model: tiny-hubert-mp, task: KS, value: null}\n"
                    "    - {model: not-in-profile, task: PR, value: 1.0, tolerance: 1.0}\n")
    write_paper_like(ws)
    rows = compare_references(ws, refs)
    assert [(r["model"], r["task"], r["status"]) for r in rows] == [
        ("tiny-wavlm-mp", "PR", "PASS"), ("tiny-hubert-mp", "PR", "FAIL"), ("tiny-hubert-mp", "KS", "NOT-RUN")]
    assert rows[0]["ours"] == 8.0


def test_check_exit_code_follows_enforcement(tmp_path, workspace_env):
    prof = tmp_path / "p.yaml"
    prof.write_text("extends: smoke\nname: enforced\npaper: {enforce_claims: true, enforce_references: false}\n")
    ws = Workspace.for_profile(str(prof))
    write_paper_like(ws, invert=True)
    res = CliRunner().invoke(main, ["paper", "check", "--profile", str(prof)])
    assert res.exit_code == 1 and "C4a      FAIL" in res.output
    res = CliRunner().invoke(main, ["paper", "check", "--profile", "smoke"])
    assert res.exit_code == 0 and "does not enforce claims and references" in res.output


def test_verify_reports_changed_missing_and_extra(ws, tmp_path, monkeypatch):
    monkeypatch.setattr(checksums, "RECORD_DIR", tmp_path / "records")
    write_paper_like(ws)
    render_output(ws, "table-1")
    checksums.record(ws)
    assert checksums.verify(ws) == {"changed": [], "missing": [], "extra": []}
    (ws.figures / "table-1.csv").write_text("tampered\n")
    (ws.figures / "table-1.md").unlink()
    (ws.figures / "new.txt").write_text("x")
    (ws.results / "probing" / "x.timing.json").write_text("{}")  # wall times are not checked
    assert checksums.verify(ws) == {"changed": ["figures/table-1.csv"], "missing": ["figures/table-1.md"],
                                    "extra": ["figures/new.txt"]}


def test_each_claim_declares_the_results_its_check_reads(tmp_path):
    """`Claim.reads` (which the projection and the README price) is what the check asks the reader for."""
    from repro.config import load_profile
    from repro.paper.claims import CLAIMS, NotRun
    from repro.paper.results import ResultReader, models_by_family

    ws = Workspace(load_profile("full"), tmp_path / "work", tmp_path / "results", tmp_path / "figures")
    families = models_by_family(ws)

    class Spy(ResultReader):
        def __init__(self, ws):
            super().__init__(ws)
            self.asked = set()

        def probe(self, model, task):
            self.asked.add((model, task))
            return super().probe(model, task)

        def cka(self, a, b):
            self.asked.add((a, b))
            return super().cka(a, b)

    for claim in CLAIMS:
        reader = Spy(ws)
        with pytest.raises(NotRun):
            claim.evaluate(ws, reader)
        models = [m for f in claim.reads.families for m in families[f]]
        expected = {(m, t) for m in models for t in claim.reads.tasks}
        if claim.reads.cka == "across":
            expected |= {tuple(sorted((a, b), key=ws.profile.models.all().index))
                         for a in families["speech_ssl"] for b in families["speaker_ssl"]}
        assert reader.asked == expected, claim.id


def test_long_labels_wrap_after_separators_and_inside_a_word_only_when_it_must():
    from repro.paper.style import wrap_text

    def fits(n):
        return lambda line: len(line) <= n

    assert wrap_text("tiny-wavlm-mp vs tiny-hubert-mp", fits(40)) == "tiny-wavlm-mp vs tiny-hubert-mp"
    assert wrap_text("a_very_long_model_name vs another-long-name", fits(12)) == \
        "a_very_long_\nmodel_name\nvs another-\nlong-name"
    assert wrap_text("abcdefghijklmnopqrstuvwxyz", fits(10)) == "abcdefghij\nklmnopqrst\nuvwxyz"


def test_a_figure_whose_labels_fit_keeps_the_bytes_matplotlib_gives_it(tmp_path):
    """`style.save` fits labels on a copy first: a figure with nothing to fit is saved exactly as
    matplotlib saves it, so fitting labels changes no figure that needs none."""
    from repro.paper import style
    from repro.paper.style import STYLE
    from repro.util.plotstyle import fixed_style

    def draw():
        fig = style.figure(style.COLUMN_WIDTH, 2.0)
        ax = fig.subplots()
        ax.imshow(np.eye(3), aspect="auto")
        ax.set_title("tiny-wavlm-mp")
        ax.set_xlabel("layer")
        return fig

    with fixed_style(STYLE):
        saved = style.save(draw(), tmp_path / "fitted")
        plain = draw()
        plain.savefig(tmp_path / "plain.pdf", format="pdf",  # the first file saved: a layout run before it shows
                      metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
    assert saved[0].suffix == ".pdf" and saved[0].read_bytes() == (tmp_path / "plain.pdf").read_bytes()
