"""Per-task probing inputs: pooled stores give the frame-store results, inputs are validated,
the features stage makes only the stores the inputs need, and upstream crops come from the audio."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from repro.config import ConfigError, load_profile
from repro.data.manifest import load_task
from repro.features.stage import extract_model
from repro.tasks import MEAN_POOLED_TASKS, stores_needed, task_input
from repro.probing.runner import ProbeRun, run_asv_idt, run_probe
from repro.probing.sources import OnTheFly, UpstreamFrames
from repro.probing.tasks import make_task
from workspaces import workspace_on

torch.set_num_threads(2)
POOLED = ("KS", "ER")  # the tiny corpus has too few IC commands to train on


def _profile(inputs: dict[str, str | None], steps: int = 20, **probing):
    probing.setdefault("er_folds", [1, 2])
    base = load_profile("smoke")
    tasks = {t: dataclasses.replace(base.probing.tasks[t], steps=steps, eval_every=10, lr_grid=[0.01], input=i)
             for t, i in inputs.items()}
    return dataclasses.replace(
        base, name="inputs", tasks=list(inputs),
        models=dataclasses.replace(base.models, speech_ssl=["tiny-wavlm"], speaker_ssl=[], speaker_sup=[]),
        probing=dataclasses.replace(base.probing, tasks=tasks, **probing))


@pytest.mark.slow
def test_pooled_store_probes_equal_frame_store_probes(tiny_corpus, tmp_path):
    cache = workspace_on(tmp_path / "cache", _profile({t: "cache" for t in POOLED}), tiny_corpus)
    pooled = workspace_on(tmp_path / "pooled", _profile({t: "pooled" for t in POOLED}), tiny_corpus)
    extract_model(cache, "tiny-wavlm", progress=False)
    extract_model(pooled, "tiny-wavlm", progress=False)
    assert not list((pooled.features_dir / "tiny-wavlm" / "KS").glob("train")), "a pooled input needs no frames"
    for task in POOLED:
        a = run_probe(cache, "tiny-wavlm", task, 0.01, ProbeRun(progress=False)).result
        b = run_probe(pooled, "tiny-wavlm", task, 0.01, ProbeRun(progress=False)).result
        assert (a["input"], b["input"]) == ("cache", "pooled") and a["pooled"] and b["pooled"]
        assert a["provenance"]["inputs"] != b["provenance"]["inputs"]
        assert b["dev"] == pytest.approx(a["dev"], abs=1e-4) and b["test"] == pytest.approx(a["test"], abs=1e-4)
        assert np.allclose(a["layer_weights"], b["layer_weights"], atol=1e-4)
        assert np.allclose(a["runs"][0]["curve"]["train_loss"], b["runs"][0]["curve"]["train_loss"], rtol=1e-3)
    frames = sum(p.stat().st_size for p in (cache.features_dir / "tiny-wavlm").rglob("*.bin"))
    means = sum(p.stat().st_size for p in (pooled.features_dir / "tiny-wavlm").rglob("*.bin"))
    assert means * 10 < frames


def test_asv_idt_reads_the_pooled_store_when_asv_is_not_probed_from_the_cache(tiny_corpus, tmp_path):
    ws = workspace_on(tmp_path, _profile({"ASV": "upstream"}), tiny_corpus)
    stores = extract_model(ws, "tiny-wavlm", progress=False).stores
    assert sorted(stores) == [("ASV", "dev.pooled"), ("ASV", "test.pooled")]  # trial splits only
    idt = run_asv_idt(ws, "tiny-wavlm").result
    frames = workspace_on(tmp_path / "f", _profile({"ASV": "cache"}), tiny_corpus)
    extract_model(frames, "tiny-wavlm", progress=False)
    ref = run_asv_idt(frames, "tiny-wavlm").result
    assert idt["embedding"] == ref["embedding"] == "mean of layer L12"
    assert idt["test"] == pytest.approx(ref["test"], abs=1e-6)


def test_inputs_are_validated_per_task():
    prof = _profile({"KS": "pooled", "PR": None, "SID": "upstream"})
    assert [task_input(prof, t) for t in ("KS", "PR", "SID")] == ["pooled", "cache", "upstream"]
    assert [stores_needed(prof, t) for t in ("KS", "PR", "SID")] == [["pooled"], ["frames"], []]
    for inputs, reason in (({"PR": "pooled"}, "the PR head does not average its frames"),
                           ({"ASV": "pooled"}, "the ASV head does not average its frames"),
                           ({"KS": "pooled"}, "probing.layer_norm normalises every frame")):
        prof = _profile(inputs, layer_norm="KS" in inputs)
        with pytest.raises(ConfigError, match=f"probing.tasks.{next(iter(inputs))}.input is 'pooled', but {reason}"):
            task_input(prof, next(iter(inputs)))
    sid = _profile({"SID": "pooled"})  # the smoke SID budget has no crops; with crops it needs frames
    assert task_input(sid, "SID") == "pooled"
    cropped = dataclasses.replace(sid, probing=dataclasses.replace(sid.probing, tasks={
        "SID": dataclasses.replace(sid.probing.tasks["SID"], train_crop_seconds=8.0)}))
    with pytest.raises(ConfigError, match="training crops"):
        task_input(cropped, "SID")


def _flat(out) -> torch.Tensor:
    return torch.cat([o.reshape(len(o), -1) for o in out], dim=1) if isinstance(out, (list, tuple)) \
        else out.reshape(len(out), -1)


def test_a_task_is_mean_pooled_exactly_when_its_head_gives_the_same_output_on_the_frames_and_on_their_mean(
        tiny_corpus):
    """`TaskSpec.mean_pooled` lets a probe train on utterance means instead of frames; that is exact only
    for a head whose output on an utterance's frames equals its output on their mean (one frame)."""
    info = json.loads((tiny_corpus / "corpus.json").read_text())
    cfg = load_profile("smoke").probing
    gen = torch.Generator().manual_seed(0)
    frames, lengths = torch.randn(3, 40, 12, generator=gen), torch.tensor([40, 23, 17])
    means = torch.stack([frames[b, :n].mean(0) for b, n in enumerate(lengths.tolist())])[:, None, :]
    pooled = set()
    for name in ("PR", "KS", "IC", "SID", "ASV", "ER"):
        utts = load_task(tiny_corpus, name)
        task = make_task(name, {"train": [u for u in utts if u.split == "train"]}, info)
        torch.manual_seed(0)
        head = task.make_head(12, cfg).eval()
        with torch.no_grad():
            on_frames, on_means = _flat(head(frames, lengths)), _flat(head(means, torch.ones(3, dtype=torch.long)))
        same = on_frames.shape == on_means.shape and torch.allclose(on_frames, on_means, rtol=1e-5, atol=1e-6)
        assert task.pooled == same, (name, task.pooled)
        if same:
            pooled.add(name)
    assert set(MEAN_POOLED_TASKS) == pooled and pooled and pooled != {"PR", "KS", "IC", "SID", "ASV", "ER"}


def test_full_and_fast_profiles_choose_the_cheapest_exact_input():
    for name in ("full", "fast"):
        prof = load_profile(name)
        chosen = {t: task_input(prof, t) for t in prof.tasks}
        assert chosen == {"PR": "upstream", "KS": "pooled", "IC": "pooled", "SID": "upstream", "ASV": "upstream",
                          "ER": "pooled"}, name
        assert prof.probing.tasks["SID"].train_crop_seconds == prof.probing.tasks["ASV"].train_crop_seconds == 8.0


def test_upstream_training_crops_are_cut_from_the_audio(hf_folder, tiny_corpus):
    from repro.models.hf_ssl import load_hf_ssl

    up = load_hf_ssl(str(hf_folder("wavlm")))
    utts = [u for u in load_task(tiny_corpus, "SID") if u.num_samples > 20000][:3]
    crop = UpstreamFrames(up, tiny_corpus, utts, [0, 1, 2], OnTheFly(crop_samples=16000, seed=0))
    whole = UpstreamFrames(up, tiny_corpus, utts, [0, 1, 2])
    layers, lengths = crop.batch([0, 1, 2], step=5)
    assert lengths.tolist() == [49] * 3  # 1 s of audio: 49 frames
    again, _ = crop.batch([0, 1, 2], step=5)
    other, _ = crop.batch([0, 1, 2], step=6)
    assert all(torch.equal(a, b) for a, b in zip(layers, again)) and not torch.equal(layers[2], other[2])
    _, full_lengths = crop.batch([0, 1, 2])  # evaluation (no step): whole utterances
    assert full_lengths.tolist() == whole.batch([0, 1, 2])[1].tolist() and min(full_lengths.tolist()) > 49


def test_prefetched_audio_gives_the_same_batches(hf_folder, tiny_corpus):
    from repro.models.hf_ssl import load_hf_ssl

    up = load_hf_ssl(str(hf_folder("wavlm")))
    utts = load_task(tiny_corpus, "SID")[:6]
    plain = UpstreamFrames(up, tiny_corpus, utts, [1], OnTheFly(crop_samples=12000, seed=3))
    ahead = UpstreamFrames(up, tiny_corpus, utts, [1], OnTheFly(crop_samples=12000, seed=3, workers=2))
    ahead.prefetch([0, 4, 5], 7)
    ahead.prefetch([1, 2], None)
    for idx, step in (([0, 4, 5], 7), ([1, 2], None), ([3], 2)):
        (a,), la = plain.batch(idx, step)
        (b,), lb = ahead.batch(idx, step)
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert not ahead._pending


def test_tasks_read_from_the_upstream_need_no_store(tiny_corpus, tmp_path):
    ws = workspace_on(tmp_path, _profile({"PR": "upstream", "SID": "upstream"}), tiny_corpus)
    done = extract_model(ws, "tiny-wavlm", progress=False)
    assert done.stores == {} and (done.audio_seconds, done.wall_seconds, done.padding_fraction) == (0.0, 0.0, 0.0)
    assert not ws.features_dir.exists()
