import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from repro.audio import AudioError, read_audio
from repro.data.manifest import Utterance, load_task
from repro.config.schema import ExtractionConfig
from repro.features.extract import ExtractRun, StoreIdentity, extract
from repro.features.store import FeatureStore, StoreError, partial_dir
from repro.models.hf_ssl import load_hf_ssl
from fake_corpora import record_audio_sha256
from interrupt import Stop, stop_at

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def upstream(hf_folder):
    return load_hf_ssl(str(hf_folder("wavlm")))


@pytest.fixture(scope="module")
def utts(tiny_corpus):
    return load_task(tiny_corpus, "SID")


INFO = {"name": "tiny"}


def files_of(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_store_holds_every_layer_of_every_utterance(upstream, utts, tiny_corpus, tmp_path):
    store = extract(upstream, utts, tiny_corpus, tmp_path / "s", StoreIdentity(INFO),
                    ExtractionConfig(max_batch_seconds=8), ExtractRun(progress=False))
    assert len(store) == len(utts) and store.num_layers == 3
    for u in utts[:5]:
        wav = torch.from_numpy(read_audio(tiny_corpus / u.path))[None]
        direct = upstream(wav, torch.tensor([wav.shape[1]]))
        for l in range(3):
            got = store.layer(l, u.id)
            assert got.shape == direct.layers[l][0].shape
            assert np.max(np.abs(got - direct.layers[l][0].numpy())) < 1e-4
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["utterances"] == len(utts) and 0 <= meta["info"]["padding_fraction"] < 0.5


def test_interrupted_extraction_resumes_to_identical_bytes(upstream, utts, tiny_corpus, tmp_path):
    whole = extract(upstream, utts, tiny_corpus, tmp_path / "whole", StoreIdentity(INFO),
                    ExtractionConfig(max_batch_seconds=8), ExtractRun(progress=False))

    with pytest.raises(Stop):
        extract(upstream, utts, tiny_corpus, tmp_path / "cut", StoreIdentity(INFO),
                ExtractionConfig(max_batch_seconds=8), ExtractRun(progress=False, on_batch=stop_at(2)))
    assert not (tmp_path / "cut").exists() and partial_dir(tmp_path / "cut").is_dir()
    with pytest.raises(StoreError, match="interrupted extraction"):
        FeatureStore(tmp_path / "cut")
    # a torn write after the last commit must be ignored on resume
    with open(partial_dir(tmp_path / "cut") / "progress.jsonl", "a") as f:
        f.write('{"ids": ["x"')
    with open(partial_dir(tmp_path / "cut") / "layer_00.bin", "ab") as f:
        f.write(b"\0" * 1000)
    calls = []
    resumed = extract(upstream, utts, tiny_corpus, tmp_path / "cut", StoreIdentity(INFO),
                      ExtractionConfig(max_batch_seconds=8), ExtractRun(progress=False, on_batch=calls.append))
    n_batches = calls[-1]
    assert calls[0] == 3 and len(calls) == n_batches - 2  # the first two batches were not recomputed
    assert files_of(whole.path) == files_of(resumed.path)


def test_changed_config_rebuilds_and_same_config_reuses(upstream, utts, tiny_corpus, tmp_path):
    path = tmp_path / "s"
    a = extract(upstream, utts, tiny_corpus, path, StoreIdentity(INFO), run=ExtractRun(progress=False))
    stamp = (path / "meta.json").stat().st_mtime_ns
    extract(upstream, utts, tiny_corpus, path, StoreIdentity(INFO), run=ExtractRun(progress=False))
    assert (path / "meta.json").stat().st_mtime_ns == stamp
    b = extract(upstream, utts, tiny_corpus, path, StoreIdentity(INFO), ExtractionConfig(dtype="float16"),
                ExtractRun(progress=False))
    assert b.key != a.key and b.meta["dtype"] == "float16"
    assert (path / "layer_00.bin").stat().st_size * 2 == sum(a.meta["frames"][:1]) * 16 * 4


def test_truncated_store_is_detected(upstream, utts, tiny_corpus, tmp_path):
    store = extract(upstream, utts, tiny_corpus, tmp_path / "s", StoreIdentity(INFO), run=ExtractRun(progress=False))
    path = store.path / "layer_01.bin"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(StoreError, match="layer_01.bin.*delete"):
        FeatureStore(store.path)
    # extraction notices the damaged store and rebuilds it
    fixed = extract(upstream, utts, tiny_corpus, tmp_path / "s", StoreIdentity(INFO), run=ExtractRun(progress=False))
    assert FeatureStore(fixed.path).key == store.key


def test_bad_audio_names_the_file_and_leaves_no_store(upstream, utts, tiny_corpus, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, root)
    bad = utts[3]
    sf.write(root / bad.path, np.zeros((bad.num_samples, 2), np.float32), 16000)
    with pytest.raises(AudioError, match=f"{bad.id}.wav: changed after its manifest recorded it"):
        extract(upstream, utts, root, tmp_path / "s", StoreIdentity(INFO), run=ExtractRun(progress=False))
    assert not (tmp_path / "s").exists()
    record_audio_sha256(root, root / bad.path)  # the manifest made from the 2-channel file
    with pytest.raises(AudioError, match=f"{bad.id}.wav: 2 channels"):
        extract(upstream, load_task(root, "SID"), root, tmp_path / "s", StoreIdentity(INFO),
                run=ExtractRun(progress=False))
    assert not (tmp_path / "s").exists()


def test_embeddings_are_stored_for_speaker_models(utts, tiny_corpus, tmp_path):
    from conftest import TINY_ECAPA
    from repro.models import ecapa

    torch.manual_seed(0)
    up = ecapa.wrap_speechbrain_ecapa(ecapa.speechbrain_ecapa(TINY_ECAPA))
    store = extract(up, utts[:6], tiny_corpus, tmp_path / "e", StoreIdentity(INFO), run=ExtractRun(progress=False))
    u = utts[2]
    wav = torch.from_numpy(read_audio(tiny_corpus / u.path))[None]
    direct = up(wav, torch.tensor([wav.shape[1]]))
    assert np.allclose(store.embedding(u.id), direct.embedding[0].numpy(), atol=1e-6)
    assert store.layer(4, u.id).shape == (wav.shape[1] // 160 + 1, 48)
