"""The smoke pipeline at world size 1 and 2: every stage (corpus, training of a speech SSL model and
of both speaker models, features, CKA, probes, paper), once by one process (started with 3 intra-op
threads) and once by `torchrun --nproc_per_node 2 -m repro run` on gloo (rendezvous on 127.0.0.1), as a user
launches it (torchrun gives each process one thread; `runtime.threads` decides), with every
output compared: the bytes of the corpus, the trained models, the feature stores, the probe
results, the figures and tables; CKA matrices as `repro paper verify` compares them; PR's probes, whose
gradients are summed in another order, within a margin of the spread measured in
artifacts/checksums/torchrun_spread.json. Also: ordered BatchNorm statistics
and the micro-batch split on their own; another thread count changes features within 1e-5; a
failed rank fails every rank with a message naming it."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from repro.config import load_profile
from repro.data.manifest import load_task
from repro.micro_batches import OrderedRunningStats, rank_micro_batches, update_in_order
from repro.paper.checksums import compare_values, read_values, value_rule
from repro.runtime import RankFailure
from repro.pipeline import STAGES, run as run_pipeline
from repro.workspace import Workspace
from torchrun_launch import Launch, command, free_port

ROOT = Path(__file__).resolve().parents[1]

# The smoke profile at test size: the tiny corpus's sizes, a few steps of everything. Micro-batches
# per step: 1 (rank 1 computes none), 2 (one per rank) and 3 (two and one).
PROFILE = """\
extends: smoke
name: ddp
corpus:
  kind: synthetic
  synthetic: {speakers: 14, asv_speakers: 4, asv_dev_speakers: 2, dev_speakers: 2, test_speakers: 2,
              pr_per_speaker: 2, ks_repeats: 1, ks_unknown_per_speaker: 1, ks_silence_per_speaker: 1,
              ic_per_speaker: 8, sid_per_speaker: 3, er_per_style: 1, er_folds: 5, asv_per_speaker: 3}
models: {speech_ssl: [tiny-wavlm, tiny-hubert-mp], speaker_ssl: [tiny-ecapa-dino], speaker_sup: [tiny-ecapa-sup]}
extraction: {device: cpu, max_batch_seconds: 8}
probing:
  device: cpu
  tasks:
    KS: {steps: 12, batch_size: 8, grad_accum: 1, lr_grid: [0.01, 0.003], eval_every: 6, input: pooled}
    IC: {steps: 8, batch_size: 8, grad_accum: 2, lr_grid: [0.01], eval_every: 4}
    SID: {steps: 12, batch_size: 8, grad_accum: 2, lr_grid: [0.01, 0.003], eval_every: 6, input: pooled}
    PR: {steps: 12, batch_size: 4, grad_accum: 3, lr_grid: [0.01, 0.003], eval_every: 6}
    ASV: {steps: 12, batch_size: 4, grad_accum: 2, lr_grid: [0.01, 0.003], eval_every: 6}
    ER: {steps: 4, batch_size: 8, grad_accum: 2, lr_grid: [0.01], eval_every: 2}
cka: {task: PR, split: test, max_frames: 0, batch_frames: 200, bootstrap: {blocks: 4, resamples: 20}, device: cpu}
runtime: {threads: 1}  # three processes share two cores; the reference process starts with 3 threads
speaker_training:
  grad_accumulation: 2
  log_every: 1
  checkpoint_every: 2
  eval_every_epochs: 1
  require_eer_improvement: false
  collapse_min_embedding_std: 0
  collapse_min_teacher_kl: 0
  supervised: {epochs: 2, batch_size: 8, lr_step_size: 2}
  dino: {epochs: 2, batch_size: 8, warmup_epochs: 1, num_avg: 2, head_out_dim: 64}
ssl_training:
  pipeline_recipes: [hubert]
  require_above_majority: false
  hubert: {steps: 6, clusters: 8, kmeans_n_init: 1, heldout_utterances: 4}
"""
CKA_TOLERANCE = value_rule("results/cka/a__b.npz").tolerance
MODELS = ("tiny-wavlm", "tiny-hubert-mp", "tiny-ecapa-dino", "tiny-ecapa-sup")


def _workspace(root: Path, profile_path: Path) -> Workspace:
    ws = Workspace(load_profile(profile_path), root / "work", root / "results", root / "figures")
    return ws


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The whole pipeline by one process (3 intra-op threads) and by torchrun with 2 workers (gloo;
    torchrun gives each process OMP_NUM_THREADS=1): `runtime.threads` (1) applies to both. The launch
    rendezvous on 127.0.0.1 and fails the test within 120 s when its workers do not start
    (tests/torchrun_launch.py), before the reference run begins."""
    root = tmp_path_factory.mktemp("ddp")
    prof = root / "ddp.yaml"
    prof.write_text(PROFILE)
    one = _workspace(root / "one", prof)
    two = _workspace(root / "two", prof)
    env = {**os.environ, "REPRO_WORK": str(two.work_root), "REPRO_RESULTS": str(two.results_root),
           "REPRO_FIGURES": str(two.figures_root), "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)  # as a user launches it: torchrun sets 1
    launch = Launch(command(2, ["-m", "repro", "run", "--profile", str(prof), "--quiet"]), 2, env, ROOT,
                    root / "launch")
    launch.wait_started()
    torch.set_num_threads(3)
    try:
        run_pipeline(one, list(STAGES), progress=False)  # meanwhile, the single-process reference
        assert torch.get_num_threads() == 3  # the run's thread count was for the run only
    finally:
        rc, out = launch.wait(timeout_s=1800)
    assert rc == 0, out[-4000:]
    return one, two


def _paths(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _files(folder: Path) -> dict[str, bytes]:
    return {name: p.read_bytes() for name, p in _paths(folder).items()}


# Outputs that say how a run went rather than what it computed (wall and CPU time, the world size,
# the machine and its CPU settings), and the lock files of the two runs' own paths.
RUN_RECORDS = ("timing.json", "REPORT.md", "provenance.json", "numerics.json", ".lock", ".lock.owner",
               ".profile.json")
# PR's probes compute 3 micro-batches per step on 2 ranks: rank 0 adds two gradients before the
# all-reduce, so the sum is rounded in another order (compared within the measured spread, below).
ROUNDED = ("probes/*/PR/*.pt", "probing/*/PR/*.json")
# Drawn from PR's layer weights as vectors (the .png beside it, rasterised, keeps its bytes), and
# the checksums of the outputs.
FOLLOWERS = ("figure-1.pdf", "figure-2.pdf", "CHECKSUMS.sha256")


# The tolerance of an output rounded in another order comes from a measured spread, with a margin:
# SPREAD_RECORD holds, for each family of floats (an output pattern of ROUNDED and a key path, list
# indices left out), the largest difference between the one-process and the torchrun outputs seen in
# a run of this test under pinned CPU numerics (which makes both runs' bits the same on any x86-64 CPU,
# so the spread is the same there), and the largest magnitude of its values. A family's tolerance is
# SPREAD_MARGIN times the larger of that difference and one float32 rounding at that magnitude
# (2^-23 relative: a family measured equal may still round once). Re-measure (after a change of the
# probes or of this test's profile) with REPRO_MEASURE_TORCHRUN_SPREAD=1.
SPREAD_RECORD = ROOT / "artifacts" / "checksums" / "torchrun_spread.json"
SPREAD_MARGIN = 10.0
FLOAT32_ROUNDING = 2.0 ** -23


def _family(pattern: str, where: str) -> str:
    import re

    return pattern + ":" + re.sub(r"\[\d+\]", "[]", where)


def _differences(x, y, where: str, pattern: str, seen: dict[str, list[float]]) -> None:
    """Walk two loaded outputs (JSON or torch.load): their structure and every non-float equal (asserted),
    and for each family of floats the largest |x - y| and the largest |y| into `seen[family]`."""
    if isinstance(x, dict):
        assert isinstance(y, dict) and sorted(map(str, x)) == sorted(map(str, y)), where
        for k in x:
            _differences(x[k], y[k], f"{where}/{k}", pattern, seen)
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), where
        for k, (p, q) in enumerate(zip(x, y)):
            _differences(p, q, f"{where}[{k}]", pattern, seen)
    elif isinstance(x, torch.Tensor) and x.is_floating_point() or isinstance(x, float):
        a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        assert a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)), where
        diff = np.where((a == b) | np.isnan(a), 0.0, np.abs(a - b))
        worst = seen.setdefault(_family(pattern, where), [0.0, 0.0])
        if a.size:
            worst[0] = max(worst[0], float(diff.max()))
            worst[1] = max(worst[1], float(np.abs(np.nan_to_num(b)).max()))
    elif isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    else:
        assert x == y, where


def _spread_tolerance(family: str, record: dict) -> float:
    measured = record["families"].get(family)
    assert measured is not None, (f"{SPREAD_RECORD.name} has no measured spread for {family}: re-measure with "
                                  "REPRO_MEASURE_TORCHRUN_SPREAD=1")
    return SPREAD_MARGIN * max(measured["max_abs_difference"], FLOAT32_ROUNDING * measured["max_abs_value"])


def _within_measured_spread(seen: dict[str, list[float]], measure: bool = False) -> None:
    """Every family of `seen` within its tolerance (SPREAD_MARGIN x the measured spread); with `measure`,
    `seen` first becomes the record."""
    if measure:
        from repro.cpu_numerics import state
        from repro.util.atomic import atomic_write_json

        atomic_write_json(SPREAD_RECORD, {
            "what": "the largest difference between the one-process and the torchrun (2 ranks) outputs of "
                    "tests/test_distributed.py::runs, per family of floats, where rank 0 adds two of PR's 3 "
                    "micro-batch gradients before the all-reduce (another summation order)",
            "how": "one run of tests/test_distributed.py (slow tier) with REPRO_MEASURE_TORCHRUN_SPREAD=1; "
                   "max |one - two| over every file of the pattern and every index of the key path",
            "tolerance": f"{SPREAD_MARGIN:g} x max(max_abs_difference, 2^-23 x max_abs_value)",
            "margin": SPREAD_MARGIN,
            "numerics": state(),
            "families": {f: {"max_abs_difference": d, "max_abs_value": m} for f, (d, m) in sorted(seen.items())}})
    record = json.loads(SPREAD_RECORD.read_text())
    assert record["numerics"]["pinned"], "the spread must be measured under pinned CPU numerics"
    over = {f: (d, _spread_tolerance(f, record)) for f, (d, _) in seen.items() if d > _spread_tolerance(f, record)}
    assert not over, f"past SPREAD_MARGIN x the measured spread ({SPREAD_RECORD}): {over}"


@pytest.mark.slow
def test_every_output_of_the_pipeline_is_the_single_process_output(runs):
    """Every file the two runs wrote (work/, results/, paper_figures/), compared: the same names and
    the same bytes, except: CKA matrices (`results/cka/*`) within the tolerance of `repro paper verify`
    (VALUE_RULES) should their bytes differ (the ranks' float64 sums are added in another order), PR's
    probes within SPREAD_MARGIN times their measured spread (SPREAD_RECORD)
    and what is drawn from them; run records aside."""
    import fnmatch

    one, two = runs
    exact, within, seen = 0, [], {}
    for a_root, b_root in ((one.work, two.work), (one.results, two.results), (one.figures, two.figures)):
        a, b = ({k: p for k, p in _paths(r).items() if not k.endswith(RUN_RECORDS)} for r in (a_root, b_root))
        assert sorted(a) == sorted(b), (a_root.name, sorted(set(a) ^ set(b))[:10])
        for name, path in a.items():
            rounded = next((g for g in ROUNDED if fnmatch.fnmatchcase(name, g)), None)
            if rounded:  # measured whether or not its bytes differ: every family of floats is in the spread
                load = (lambda p: json.loads(p.read_text())) if name.endswith(".json") else \
                    (lambda p: torch.load(p, weights_only=False))
                _differences(load(path), load(b[name]), "", rounded, seen)
            if path.read_bytes() == b[name].read_bytes():
                exact += 1
                continue
            within.append(name)
            if a_root == one.results and name.startswith("cka/"):  # the sums added in another order
                stable = f"results/{name}"  # compared as `repro paper verify` compares them (VALUE_RULES)
                ok, detail = compare_values(stable, b[name], read_values(path, value_rule(stable).kind))
                assert ok, (name, detail)
            elif name.endswith(".sha256") and any(fnmatch.fnmatchcase(name[:-len(".sha256")], g) for g in ROUNDED):
                pass  # the digest record of a checkpoint compared within the tolerance follows it
            elif not rounded:
                assert a_root == one.figures and name in FOLLOWERS, f"{a_root.name}/{name} differs"
    assert {p.split(":")[0] for p in seen} == set(ROUNDED)
    _within_measured_spread(seen, measure=os.environ.get("REPRO_MEASURE_TORCHRUN_SPREAD") == "1")
    assert exact > 900 and all("/PR/" in n or n.endswith(FOLLOWERS) or "/cka/" in n for n in within), within
    for model in MODELS:  # every stage's outputs are among the identical ones
        assert (one.models_dir / model / "model.json").is_file() or model == "tiny-wavlm"
        assert (one.features_dir / model).is_dir() and (one.probe_dir(model, "ASV") / "best.json").is_file()
    assert (one.figures / "figure-1.png").is_file() and (one.figures / "CHECKSUMS.sha256").is_file()


@pytest.mark.slow
def test_sharded_extraction_writes_the_single_process_stores(runs):
    one, two = runs
    a, b = _files(one.features_dir), _files(two.features_dir)
    assert sorted(a) == sorted(b)
    assert any(k.endswith(".pooled/meta.json") for k in a) and any(k.endswith("test/layer_12.bin") for k in a)
    assert not [k for k in b if ".shards" in k or ".partial" in k]
    for name in a:
        assert a[name] == b[name], name


@pytest.mark.slow
def test_sharded_cka_equals_the_single_process_matrices(runs):
    one, two = runs
    files = sorted((one.results / "cka").glob("*.npz"))
    assert len(files) == 10  # four models with themselves, and the six pairs
    for path in files:
        x, y = np.load(path), np.load(two.results / "cka" / path.name)
        for key in ("cka_biased", "cka_debiased", "ci_low", "ci_high"):
            assert np.allclose(x[key], y[key], rtol=0, atol=CKA_TOLERANCE), (path.name, key)
        assert x["cka_biased"].shape == y["cka_biased"].shape and x["cka_biased"].shape[0] > 1
    assert not (two.work / "cka_shards").exists() or not any((two.work / "cka_shards").iterdir())


@pytest.mark.slow
def test_ddp_probes_equal_the_single_process_probes(runs):
    one, two = runs
    for model, tag in ((m, t) for m in MODELS for t in ("lr-1e-02", "lr-3e-03")):
        for task, input_ in (("KS", "pooled"), ("SID", "pooled"), ("PR", "cache")):  # each task's lrs: one group
            x = json.loads((one.results / "probing" / model / task / f"{tag}.json").read_text())
            y = json.loads((two.results / "probing" / model / task / f"{tag}.json").read_text())
            assert x["input"] == y["input"] == input_ and x["provenance"] == y["provenance"]
            if task == "PR":  # the other tasks: the same bytes, below
                seen: dict[str, list[float]] = {}
                _differences(x, y, "", "probing/*/PR/*.json", seen)
                _within_measured_spread(seen)
            if task != "PR":  # each rank computes at most one micro-batch of a step: the same bytes
                assert (one.results / "probing" / model / task / f"{tag}.json").read_bytes() == \
                    (two.results / "probing" / model / task / f"{tag}.json").read_bytes()
            timing = json.loads((two.results / "probing" / model / task / f"{tag}.timing.json").read_text())
            assert timing["ranks"] == 2 and timing["group"] == [0.01, 0.003]


@pytest.mark.slow
def test_ddp_asv_writes_the_single_process_result_files(runs):
    one, two = runs
    for model in MODELS:
        a = {p.name: p.read_bytes() for p in sorted(one.probe_dir(model, "ASV").glob("*.json"))
             if not p.name.endswith(".timing.json")}
        b = {p.name: p.read_bytes() for p in sorted(two.probe_dir(model, "ASV").glob("*.json"))
             if not p.name.endswith(".timing.json")}
        assert {"lr-1e-02.json", "lr-3e-03.json", "best.json"} <= set(a) and sorted(a) == sorted(b)
        for name in a:
            assert a[name] == b[name], (model, name)


def test_a_session_runs_with_the_profile_thread_count_and_restores_it():
    from repro.errors import ConfigError
    from repro.runtime import session

    base = load_profile("smoke")
    torch.set_num_threads(3)
    for threads, inside in ((1, 1), (2, 2), (0, 3)):  # 0: torch's count as it was
        profile = dataclasses.replace(base, runtime=dataclasses.replace(base.runtime, threads=threads))
        with session(profile):
            assert torch.get_num_threads() == inside
        assert torch.get_num_threads() == 3
    bad = dataclasses.replace(base, runtime=dataclasses.replace(base.runtime, threads=-1))
    with pytest.raises(ConfigError, match="runtime.threads"):
        with session(bad):
            pass
    assert load_profile("smoke").runtime.threads == load_profile("full").runtime.threads == 2


def test_every_micro_batch_of_a_step_goes_to_exactly_one_rank():
    for accum in (1, 2, 3, 5, 8):
        for world in (1, 2, 3, 4, 8):
            shares = [rank_micro_batches(accum, world, r) for r in range(world)]
            assert sorted(a for s in shares for a in s if a >= 0) == list(range(accum))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
            assert all(s == [-1] for s in shares[accum:])  # ranks beyond the micro-batches: weight 0


def _failing_rank(rank: int, port: int, corpus: str, folder: str, bad: str, model_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from repro.config.schema import ExtractionConfig
    from repro.features.extract import ExtractRun, StoreIdentity, extract
    from repro.models.hf_ssl import load_hf_ssl
    from repro.runtime import setup

    env = setup("cpu", timeout_s=60)
    utts = load_task(Path(corpus), "SID")[:24]
    if rank == 1:  # only rank 1 reads a broken copy of one of its utterances
        utts = [u if u.id != Path(bad).stem else u.__class__(**{**u.__dict__, "path": bad}) for u in utts]
    message = "no error"
    try:
        extract(load_hf_ssl(model_dir), utts, corpus, Path(folder) / "store", StoreIdentity({"name": "tiny"}),
                ExtractionConfig(max_batch_seconds=6, device="cpu"), ExtractRun(progress=False, env=env, timeout_s=60))
    except RankFailure as err:
        message = str(err)
    Path(folder, f"rank{rank}.txt").write_text(message)


@pytest.mark.slow
def test_a_failing_rank_fails_every_rank_with_its_name_and_error(tiny_corpus, tmp_path, hf_folder):
    from repro.features.batching import plan_batches

    utts = load_task(tiny_corpus, "SID")[:24]
    batches = plan_batches(utts, 6)
    victim = utts[batches[1][0]]  # batch 1 belongs to rank 1
    bad = tmp_path / f"{victim.id}.wav"
    sf.write(bad, np.zeros((victim.num_samples, 2), np.float32), 16000)  # two channels: refused
    port = free_port()
    args = (port, str(tiny_corpus), str(tmp_path), str(bad), str(hf_folder("wavlm")))
    torch.multiprocessing.spawn(_failing_rank, args=args, nprocs=2)
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith(f"extraction of {tmp_path / 'store'}: rank 1 failed: AudioError:"), message
        # the broken copy is not the file the manifest hashed: refused before it is decoded
        assert f"{victim.id}.wav: changed after its manifest recorded it" in message
    marker = json.loads((tmp_path / "store.shards" / "rank-001-of-002.failed").read_text())
    assert "changed after its manifest recorded it" in marker["message"]
    assert (tmp_path / "store.shards" / "rank-000-of-002.done").is_file() and not (tmp_path / "store").exists()


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv1d(4, 6, 3), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                               torch.nn.BatchNorm1d(6, momentum=None))  # exponential and cumulative averages


def _bn_inputs(steps: int, accum: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(3, 4, 10 + a, generator=g) * (1 + a) + a for a in range(accum)] for _ in range(steps)]


def _bn_steps(net: torch.nn.Module, steps, mine: list[int], env=None) -> dict[str, torch.Tensor]:
    net.train()
    with OrderedRunningStats(net) as running:
        for micro in steps:
            for a in mine:
                if a >= 0:
                    net(micro[a])
            update_in_order([running], mine, len(micro), env)
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_batchnorm_running_statistics_in_micro_batch_order_are_those_of_pytorch():
    """One process: the recorded updates give what BatchNorm's own forwards give, to float rounding."""
    steps = _bn_inputs(4, 3)
    ours = _bn_steps(_bn_net(), steps, [0, 1, 2])
    ref = _bn_net().train()
    for micro in steps:
        for x in micro:
            ref(x)
    for key, value in ref.state_dict().items():
        assert torch.allclose(ours[key].double(), value.double(), rtol=1e-6, atol=1e-7), key
    assert int(ours["1.num_batches_tracked"]) == 12 and int(ours["3.num_batches_tracked"]) == 12
    assert not torch.equal(ours["1.running_mean"], _bn_net().state_dict()["1.running_mean"])


def _bn_rank(rank: int, port: int, folder: str, accum: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from repro.runtime import setup, teardown

    env = setup("cpu", timeout_s=60)
    state = _bn_steps(_bn_net(), _bn_inputs(4, accum), rank_micro_batches(accum, 2, rank), env)
    torch.save(state, Path(folder) / f"rank{rank}-accum{accum}.pt")
    teardown(env)


@pytest.mark.parametrize("accum", [1, 2, 3])
def test_batchnorm_running_statistics_under_two_ranks_are_the_single_process_bytes(tmp_path, accum):
    """G = 1 (rank 1 has no micro-batch), 2 (one each), 3 (two and one): every rank ends with the
    running statistics of one process, to the byte."""
    torch.set_num_threads(1)
    single = _bn_steps(_bn_net(), _bn_inputs(4, accum), list(range(accum)))
    port = free_port()
    torch.multiprocessing.spawn(_bn_rank, args=(port, str(tmp_path), accum), nprocs=2)
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}-accum{accum}.pt")
        for key, value in single.items():
            assert torch.equal(state[key], value), (rank, key)


def test_feature_stores_at_other_thread_counts_agree_within_the_stated_tolerance(tiny_corpus, tmp_path):
    """Another `runtime.threads` changes the rounding only: stores within 1e-5 (measured: 2.1e-6)."""
    from repro.features.stage import extract_model
    from repro.runtime import threads_of

    base = dataclasses.replace(load_profile("smoke"), tasks=["PR"])
    stores = {}
    for threads in (1, 2):
        prof = dataclasses.replace(base, runtime=dataclasses.replace(base.runtime, threads=threads))
        root = tmp_path / f"t{threads}"
        ws = Workspace(prof, root / "work", root / "results", root / "figures")
        ws.work.mkdir(parents=True)
        (ws.work / "corpus").symlink_to(tiny_corpus)
        with threads_of(prof):
            extract_model(ws, "tiny-wavlm", progress=False)
        stores[threads] = {str(p.relative_to(ws.features_dir)): p for p in sorted(ws.features_dir.rglob("*.bin"))}
    assert sorted(stores[1]) == sorted(stores[2]) and len(stores[1]) >= 13
    for name, path in stores[1].items():
        x, y = np.fromfile(path, np.float32), np.fromfile(stores[2][name], np.float32)
        assert x.shape == y.shape and np.allclose(x, y, rtol=1e-5, atol=1e-5), name
