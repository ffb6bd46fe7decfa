"""The typed configuration of a profile (smoke, fast, full), one module per section it configures.

Every field has a default or is required by the profile files under
`repro/config/profiles/`. Every numeric setting has its allowed values in its class's
`RANGES` (a `Range`), checked when a profile is loaded (`repro.config.typed.from_dict`). Fields built with
`setting(..., open=True)` are the choices the paper leaves open (see PAPER.md, "What is NOT known"): each
carries the value we chose and a one-line reason, and `repro config explain` lists them.

Sections: `data` (corpora, synthetic corpus, subsets), `models`, `extraction`, `probing`, `similarity`
(CKA), `speaker` and `ssl` (training recipes), `paper`, `runtime` (threads, numerics, torchrun), and
`profile` (the whole); `common` holds `setting` and `iter_settings`.
"""

from repro.config.schema.common import FolderNames, iter_settings, setting
from repro.config.schema.data import CorpusConfig, DataConfig, SubsetRule, SynthConfig
from repro.config.schema.extraction import AttentionPaths, ExtractionConfig, available_attention_paths
from repro.config.schema.models import ModelsConfig
from repro.config.schema.paper import PaperConfig
from repro.config.schema.probing import ProbingConfig, TaskBudget
from repro.config.schema.profile import ProfileConfig
from repro.config.schema.runtime import DistributedConfig, RuntimeConfig
from repro.config.schema.similarity import CKABootstrapConfig, CKAConfig
from repro.config.schema.speaker import (DinoRecipeConfig, SpeakerAugmentConfig, SpeakerTrainingConfig,
                                         SupervisedRecipeConfig)
from repro.config.schema.ssl import HubertRecipeConfig, MaskedPredictionConfig, SslTrainingConfig, WavlmRecipeConfig

__all__ = ["AttentionPaths", "CKABootstrapConfig", "CKAConfig", "CorpusConfig", "DataConfig", "DinoRecipeConfig",
           "DistributedConfig", "ExtractionConfig", "FolderNames", "HubertRecipeConfig", "MaskedPredictionConfig",
           "ModelsConfig", "PaperConfig", "ProbingConfig", "ProfileConfig", "RuntimeConfig", "SpeakerAugmentConfig",
           "SpeakerTrainingConfig", "SslTrainingConfig", "SubsetRule", "SupervisedRecipeConfig", "SynthConfig",
           "TaskBudget", "WavlmRecipeConfig", "available_attention_paths", "iter_settings", "setting"]
