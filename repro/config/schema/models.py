"""Settings naming the models a profile analyses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from repro.config.schema.common import setting


@dataclass(frozen=True)
class ModelsConfig:
    """Registry names of the models analysed, by family (see `repro models list`)."""

    speech_ssl: list[str] = setting(
        ["wavlm-base-plus", "hubert-base"],
        "the paper names WavLM and HuBERT; Base-size (12 layers, 768-d) as stated; Base+ for WavLM "
        "is our assumption (the body could not be read)",
        open=True,
    )
    speaker_ssl: list[str] = setting(
        ["ecapa-dino-wespeaker"],
        "DINO speaker SSL on ECAPA-TDNN; the paper's model was never released, a trained (ecapa-dino) or "
        "public (ecapa-dino-wespeaker) stand-in is used",
        open=True,
    )
    speaker_sup: list[str] = setting(
        ["ecapa-sup-speechbrain"],
        "supervised ECAPA-TDNN; speechbrain's public VoxCeleb model stands in for the paper's",
        open=True,
    )
    ecapa_layers: list[Literal["tdnn", "res2net1", "res2net2", "res2net3", "mfa"]] = setting(
        ["tdnn", "res2net1", "res2net2", "res2net3", "mfa"],
        "all frame-level blocks of ECAPA-TDNN: first TDNN, three SE-Res2Blocks, multi-layer aggregation",
        open=True,
    )

    def all(self) -> list[str]:
        """Every model of the profile, speech SSL first, in a stable order."""
        return [*self.speech_ssl, *self.speaker_ssl, *self.speaker_sup]
