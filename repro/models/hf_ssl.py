"""Speech SSL models from Hugging Face transformers (WavLM, HuBERT, wav2vec 2.0).

`HFSpeechSSL` returns every hidden state (`output_hidden_states=True`): for a
Base model 13 layers, the Transformer input (CNN features after projection,
positional convolution and layer norm) and the output of each of the 12 blocks,
the same positions as s3prl's upstreams. Frames are 20 ms (50 frames/s).

Padding: Base models normalise the first CNN layer with a GroupNorm over the
whole time axis, so zero padding changes every frame of a padded utterance
(by up to ~1.0 here). We replace that layer's normalisation with one computed
over each utterance's valid frames only (`MaskedGroupNormConv`); with the
attention mask for the Transformer, a padded batch then gives the features of
each utterance alone to within float32 rounding (tested at 1e-4).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.errors import ConfigError
from repro.models.upstream import LayerInfo, ModelUnavailableError, Upstream, UpstreamOutput, length_mask


class MaskedGroupNormConv(nn.Module):
    """First feature-encoder layer (conv -> per-channel GroupNorm -> activation) with masked statistics.

    Wraps a transformers `*GroupNormConvLayer` and reuses its parameters. Before
    each forward, `valid_samples` (`[B]` int64) must be set; the mean and
    variance of every channel are then taken over the frames whose receptive
    field lies inside the valid samples, exactly what the layer computes on an
    unpadded utterance.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        norm = layer.layer_norm
        if not isinstance(norm, nn.GroupNorm) or norm.num_groups != norm.num_channels:
            raise TypeError("MaskedGroupNormConv needs a per-channel GroupNorm (num_groups == num_channels)")
        self.conv = layer.conv
        self.layer_norm = norm
        self.activation = layer.activation
        self.valid_samples: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """`x` `[B, 1, S]` -> `[B, C, T]`.

        Each utterance's valid frames are normalised by the library's own group norm, one call per
        utterance: the result is bit for bit that of the unpadded utterance, and the calls (each
        over C x T values, millions) measured faster than a masked vectorised form (four extra
        passes over the batch). Padded frames are set to zero; no valid frame of a later layer sees them.
        """
        y = self.conv(x).float()  # statistics in float32 also under autocast (as GroupNorm is)
        norm = self.layer_norm
        if self.valid_samples is None:
            return self.activation(norm(y))
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        frames = torch.div(self.valid_samples.cpu() - k, s, rounding_mode="floor").add(1).clamp(1, y.shape[-1])
        if bool((frames == y.shape[-1]).all()):
            return self.activation(norm(y))
        for b, n in enumerate(frames.tolist()):
            y[b : b + 1, :, :n] = F.group_norm(y[b : b + 1, :, :n], norm.num_groups, norm.weight, norm.bias, norm.eps)
            y[b, :, n:] = 0.0
        return self.activation(y)


class HFSpeechSSL(Upstream):
    """A transformers speech SSL model (`WavLMModel`, `HubertModel`, `Wav2Vec2Model`) as an Upstream.

    Args:
        model: the loaded model (any class with `feature_extractor`, `encoder`
            and `_get_feat_extract_output_lengths`).
        normalize_waveform: zero-mean unit-variance normalisation of each
            utterance over its valid samples (the checkpoint's `do_normalize`).
    """

    def __init__(self, model: nn.Module, normalize_waveform: bool):
        super().__init__()
        self.model = model
        self.normalize_waveform = bool(normalize_waveform)
        cfg = model.config
        self._masked_conv: MaskedGroupNormConv | None = None
        if getattr(cfg, "feat_extract_norm", "layer") == "group":
            self._masked_conv = MaskedGroupNormConv(model.feature_extractor.conv_layers[0])
            model.feature_extractor.conv_layers[0] = self._masked_conv
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
        if self._masked_conv is not None:
            self._masked_conv.valid_samples = wav_lengths
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                out = self.model(wavs, attention_mask=mask.long(), output_hidden_states=True)
        finally:
            if self._masked_conv is not None:
                self._masked_conv.valid_samples = None
        layers = list(out.hidden_states)
        if len(layers) != len(self._info):
            raise RuntimeError(f"expected {len(self._info)} hidden states, got {len(layers)} (is layerdrop active?)")
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
        chosen = {"attn_implementation": "eager"} if attention == "eager" else {}  # sdpa: transformers' default
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
    return HFSpeechSSL(model, normalize_waveform)


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
