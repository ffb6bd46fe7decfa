"""Speech SSL models from Hugging Face transformers (WavLM, HuBERT, wav2vec 2.0).

`HFSpeechSSL` returns every hidden state (`output_hidden_states=True`): for a
Base model 13 layers, the Transformer input (CNN features after projection,
positional convolution and layer norm) and the output of each of the 12 blocks,
the same positions as s3prl's upstreams. Frames are 20 ms (50 frames/s).

Padding: Base models normalise the first CNN layer with a GroupNorm over the
whole time axis, so zero padding changes every frame of a padded utterance
(by up to ~1.0 here). The forward (`repro.models.hf_encoder`) takes that layer's
statistics over each utterance's valid frames only; with the key-padding mask of
the Transformer, a padded batch then gives the features of each utterance alone
to within float32 rounding (tested at 1e-4). The forward reads nothing back to the
host, and its attention path is the profile's `extraction.attention`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from repro.errors import ConfigError
from repro.models.hf_encoder import ATTENTION_PATHS, encoder_hidden_states
from repro.models.upstream import LayerInfo, ModelUnavailableError, Upstream, UpstreamOutput, length_mask


class HFSpeechSSL(Upstream):
    """A transformers speech SSL model (`WavLMModel`, `HubertModel`, `Wav2Vec2Model`) as an Upstream.

    Args:
        model: the loaded model (any class with `feature_extractor`, `encoder`
            and `_get_feat_extract_output_lengths`).
        normalize_waveform: zero-mean unit-variance normalisation of each
            utterance over its valid samples (the checkpoint's `do_normalize`).
        attention: `sdpa`, `flex` or `eager` (`repro.models.hf_encoder`); None: `eager` for a model built
            with transformers' eager attention where transformers also has SDPA for it (HuBERT,
            wav2vec 2.0), else `sdpa` (WavLM, whose transformers class has eager attention only).
    """

    def __init__(self, model: nn.Module, normalize_waveform: bool, attention: str | None = None):
        super().__init__()
        if attention is None:
            chose_eager = getattr(model.config, "_attn_implementation", None) == "eager"
            attention = "eager" if chose_eager and getattr(model, "_supports_sdpa", False) else "sdpa"
        if attention not in ATTENTION_PATHS:
            raise ConfigError(f"extraction.attention is {attention!r}; paths: {', '.join(ATTENTION_PATHS)}")
        self.model = model
        self.normalize_waveform = bool(normalize_waveform)
        self.attention = attention
        cfg = model.config
        if attention == "eager":  # transformers' own layers run with its eager attention
            cfg._attn_implementation = "eager"
        hop = 1
        for stride in cfg.conv_stride:
            hop *= int(stride)
        self._frame_rate = self.sample_rate / hop
        self._info = [
            LayerInfo(f"L{i}", int(cfg.hidden_size), self._frame_rate) for i in range(cfg.num_hidden_layers + 1)
        ]
        self.freeze()

    def layer_info(self) -> list[LayerInfo]:
        return list(self._info)

    def frame_lengths(self, wav_lengths: Tensor) -> list[Tensor]:
        n = self.model._get_feat_extract_output_lengths(wav_lengths).long()
        return [n] * len(self._info)

    @torch.no_grad()
    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> UpstreamOutput:
        wav_lengths = wav_lengths.to(wavs.device)
        mask = length_mask(wav_lengths, wavs.shape[1])
        if self.normalize_waveform:
            wavs = _normalize(wavs, mask)
        layers = encoder_hidden_states(self.model, wavs, wav_lengths, self.attention)
        return UpstreamOutput(layers=layers, lengths=self.frame_lengths(wav_lengths))


def _normalize(wavs: Tensor, mask: Tensor) -> Tensor:
    """Zero mean, unit variance over valid samples (as transformers' feature extractor); padding stays 0."""
    m = mask.to(wavs.dtype)
    n = m.sum(-1, keepdim=True)
    mean = (wavs * m).sum(-1, keepdim=True) / n
    var = (((wavs - mean) * m) ** 2).sum(-1, keepdim=True) / n
    return (wavs - mean) / torch.sqrt(var + 1e-7) * m


def load_hf_ssl(source: str, revision: str | None = None, normalize_waveform: bool | None = None,
                attention: str = "sdpa") -> HFSpeechSSL:
    """Load a speech SSL model with `from_pretrained` from a hub id (pinned `revision`) or a local folder.

    `normalize_waveform=None` reads `do_normalize` from the checkpoint's
    `preprocessor_config.json`. `attention`: `sdpa` runs attention through torch's
    scaled_dot_product_attention where the model has that path (HuBERT; WavLM's gated relative
    position bias has none and runs eager), `eager` the reference implementation everywhere.
    """
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
        config.layerdrop = 0.0
        chosen = {"attn_implementation": "eager"} if attention == "eager" else {}  # sdpa, flex: run by hf_encoder
        model = AutoModel.from_pretrained(source, revision=revision, config=config, **chosen)
    except OSError as err:  # not in the cache and not reachable, or not a model folder
        where = f"{source}@{revision[:10]}" if revision else source
        raise ModelUnavailableError(
            f"{where}: cannot load the model ({' '.join(str(err).split())[:200]}); check the network or "
            "HF_HOME (the cache), or point the registry entry's `source:` at a local folder") from err
    if normalize_waveform is None:
        try:
            fe = AutoFeatureExtractor.from_pretrained(source, revision=revision)
        except OSError as err:
            raise ModelUnavailableError(
                f"{source}: no preprocessor_config.json; set `normalize_waveform` in the model's registry entry"
            ) from err
        normalize_waveform = bool(getattr(fe, "do_normalize", False))
    return HFSpeechSSL(model, normalize_waveform, attention)


_TINY_CLASSES = {
    "wavlm": ("WavLMConfig", "WavLMModel"),
    "hubert": ("HubertConfig", "HubertModel"),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
}


def save_random_hf_ssl(folder, model_type: str, seed: int, **config_kwargs) -> None:
    """Save a randomly initialised model of `model_type` with `save_pretrained` (plus its feature extractor).

    Used for the smoke profile's tiny models and in tests: the result loads
    through `load_hf_ssl(folder)`, the same path as a hub checkpoint.
    """
    import transformers
    from transformers import Wav2Vec2FeatureExtractor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if model_type not in _TINY_CLASSES:
        raise ConfigError(f"model_type {model_type!r}; known: {', '.join(_TINY_CLASSES)}")
    cfg_cls, model_cls = (getattr(transformers, n) for n in _TINY_CLASSES[model_type])
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**config_kwargs)).eval()
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False, return_attention_mask=True
    ).save_pretrained(folder)
