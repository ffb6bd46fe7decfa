"""How much of each corpus a rehearsal makes (`repro.rehearse.corpora`): the fast and full rehearsals'
sizes (`Sizes()`), the CI rehearsal's (`CI`), and the report's line listing them."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much of each corpus a rehearsal makes (speakers, utterances per speaker, seconds).

    VoxCeleb1's identification split puts a speaker's last utterance in test, the one before in dev and
    the others in train: `vox_videos * vox_per_video` must be at least 3."""

    sentence_words: int = 5  # words of each generated sentence kept (0: the whole sentence of 5 to 12 words)
    libri_speakers: tuple[int, int, int] = (4, 2, 2)  # train-clean-100, dev-clean, test-clean
    libri_per_speaker: int = 3
    ks_train_speakers: int = 4  # per word, chosen so that the hashing rule puts them in train
    ks_dev_speakers: int = 1
    ks_unknown_words: int = 2
    ks_test_per_class: int = 1
    fsc_speakers: tuple[int, int, int] = (2, 1, 1)  # train, valid, test
    fsc_intents_per_speaker: int = 0  # 0: every intent
    vox_dev_speakers: int = 6
    vox_test_speakers: int = 2  # the ASV trials' speakers
    vox_videos: int = 2
    vox_per_video: int = 2
    vox_seconds: float = 2.0  # the other utterances: sentences until at least this long
    vox_long_seconds: float = 9.0  # one utterance per speaker longer than the 8 s training crop
    vox_trials: int = 12
    vox2_speakers: int = 3
    vox2_per_speaker: int = 2
    musan_per_category: int = 2
    rirs_per_room: int = 2
    iemocap_dialogs: int = 1  # per session (1: improvised in odd sessions, scripted in even ones; 2: both)
    iemocap_per_dialog: int = 7  # one turn of each label of the cycle: every class in every session
    noise_seconds: float = 6.0


CI = Sizes(libri_speakers=(3, 2, 2), libri_per_speaker=2, ks_train_speakers=2, ks_unknown_words=1, fsc_speakers=(1, 1, 1),
           vox_dev_speakers=4, vox_long_seconds=0.0, vox_trials=6, vox2_speakers=2)


def sizes_line(sizes: Sizes, ci: bool = False) -> str:
    """The rehearsal report's line of the corpus sizes (every field of `sizes`)."""
    what = "the CI sizes, corpora.CI; models: tiny configurations" if ci else "repro.rehearse.corpora.Sizes"
    return f"corpus sizes ({what}): " + ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(sizes).items())
