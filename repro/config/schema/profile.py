"""A complete profile: every section's settings together."""

from __future__ import annotations

from dataclasses import dataclass, field

from repro.config.schema.common import setting
from repro.config.schema.data import CorpusConfig, DataConfig
from repro.config.schema.extraction import ExtractionConfig
from repro.config.schema.models import ModelsConfig
from repro.config.schema.paper import PaperConfig
from repro.config.schema.probing import ProbingConfig
from repro.config.schema.runtime import DistributedConfig, RuntimeConfig
from repro.config.schema.similarity import CKAConfig
from repro.config.schema.speaker import SpeakerTrainingConfig
from repro.config.schema.ssl import SslTrainingConfig
from repro.config.typed import Range
from repro.tasks import TASK_NAMES, TaskNames


@dataclass(frozen=True)
class ProfileConfig:
    """A complete profile: corpus, models, and the settings of every stage."""

    RANGES = {"seed": Range(0), "tasks": TaskNames()}

    name: str
    description: str
    seed: int
    corpus: CorpusConfig
    models: ModelsConfig = field(default_factory=ModelsConfig)
    tasks: list[str] = setting(
        list(TASK_NAMES),
        "the SUPERB tasks the paper probes: content, semantics, speaker, paralinguistics",
        open=True,
    )
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    data: DataConfig = field(default_factory=DataConfig)
    speaker_training: SpeakerTrainingConfig = field(default_factory=SpeakerTrainingConfig)
    ssl_training: SslTrainingConfig = field(default_factory=SslTrainingConfig)
    cka: CKAConfig = field(default_factory=CKAConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
