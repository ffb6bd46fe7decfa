"""Texts of the synthetic corpus: word lists, sentence grammar, keyword and intent sets.

Label sets mirror the real SUPERB corpora: Speech Commands v0.01's ten keywords
plus `_unknown_` and `_silence_`; Fluent Speech Commands' action / object /
location slots; IEMOCAP's four emotion classes (here: speaking styles).
"""

from __future__ import annotations

import numpy as np

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
UNKNOWN_WORDS = [
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
    "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
]
UNKNOWN_LABEL = "_unknown_"
SILENCE_LABEL = "_silence_"
KS_LABELS = [*KEYWORDS, UNKNOWN_LABEL, SILENCE_LABEL]

# (action, object, location) -> phrasings; "none" marks an empty slot, as in Fluent Speech Commands.
INTENTS: dict[tuple[str, str, str], list[str]] = {
    ("activate", "lights", "none"): ["turn on the lights", "switch the lights on", "lights on"],
    ("activate", "lights", "kitchen"): ["turn on the kitchen lights", "switch on the lights in the kitchen"],
    ("activate", "lights", "bedroom"): ["turn on the bedroom lights", "lights on in the bedroom"],
    ("activate", "lights", "washroom"): ["turn on the washroom lights", "switch on the lights in the washroom"],
    ("deactivate", "lights", "none"): ["turn off the lights", "switch the lights off", "lights off"],
    ("deactivate", "lights", "kitchen"): ["turn off the kitchen lights", "switch off the lights in the kitchen"],
    ("deactivate", "lights", "bedroom"): ["turn off the bedroom lights", "lights off in the bedroom"],
    ("activate", "music", "none"): ["play the music", "start the music", "put some music on"],
    ("deactivate", "music", "none"): ["stop the music", "pause the music", "turn the music off"],
    ("increase", "volume", "none"): ["turn up the volume", "make it louder", "increase the volume"],
    ("decrease", "volume", "none"): ["turn down the volume", "make it quieter", "decrease the volume"],
    ("increase", "heat", "none"): ["turn up the heat", "make it warmer", "increase the temperature"],
    ("decrease", "heat", "none"): ["turn down the heat", "make it cooler", "decrease the temperature"],
    ("increase", "heat", "kitchen"): ["turn up the heat in the kitchen", "make the kitchen warmer"],
    ("decrease", "heat", "bedroom"): ["turn down the heat in the bedroom", "make the bedroom cooler"],
    ("bring", "newspaper", "none"): ["bring me the newspaper", "get the newspaper"],
    ("bring", "juice", "none"): ["bring me some juice", "get me the juice"],
    ("bring", "shoes", "none"): ["bring me my shoes", "get my shoes"],
    ("change language", "korean", "none"): ["switch the language to korean", "use korean"],
    ("change language", "german", "none"): ["switch the language to german", "use german"],
    ("change language", "english", "none"): ["switch the language to english", "use english"],
}
IC_SLOTS = ("action", "object", "location")

# Speaking styles standing in for IEMOCAP's four classes: offsets from a speaker's own
# voice in pitch (espeak -p units), relative speed, and amplitude (espeak -a, 100 = default).
ER_STYLES: dict[str, dict[str, float]] = {
    "neu": {"pitch": 0.0, "speed": 1.00, "amplitude": 100.0},
    "hap": {"pitch": 22.0, "speed": 1.12, "amplitude": 130.0},
    "sad": {"pitch": -18.0, "speed": 0.78, "amplitude": 55.0},
    "ang": {"pitch": 8.0, "speed": 1.28, "amplitude": 190.0},
}

_DETERMINERS = ["the", "a", "my", "your", "this", "that", "every", "one"]
_ADJECTIVES = [
    "small", "large", "green", "quiet", "happy", "old", "young", "bright", "dark", "heavy",
    "gentle", "simple", "early", "strange", "clever", "tired", "yellow", "busy", "warm", "cold",
]
_NOUNS = [
    "house", "river", "garden", "teacher", "window", "story", "machine", "doctor", "bottle", "mountain",
    "letter", "table", "picture", "village", "engine", "kitchen", "planet", "pocket", "ladder", "forest",
    "student", "sister", "brother", "friend", "market", "island", "bridge", "painter", "farmer", "camera",
]
_VERBS = [
    "found", "carried", "painted", "watched", "opened", "followed", "visited", "cleaned", "answered", "moved",
    "described", "remembered", "touched", "reached", "closed", "fixed", "measured", "noticed", "joined", "pushed",
]
_ADVERBS = ["slowly", "quickly", "today", "again", "later", "quietly", "easily", "together", "outside", "yesterday"]
_PREPOSITIONS = ["near", "behind", "under", "beside", "across", "inside", "above", "beyond"]


def random_sentence(rng: np.random.Generator) -> str:
    """One grammatical sentence of 5 to 12 words from the built-in vocabulary."""

    def noun_phrase() -> str:
        words = [rng.choice(_DETERMINERS)]
        if rng.random() < 0.6:
            words.append(rng.choice(_ADJECTIVES))
        words.append(rng.choice(_NOUNS))
        return " ".join(words)

    parts = [noun_phrase(), rng.choice(_VERBS), noun_phrase()]
    if rng.random() < 0.5:
        parts += [rng.choice(_PREPOSITIONS), noun_phrase()]
    if rng.random() < 0.4:
        parts.append(rng.choice(_ADVERBS))
    return " ".join(str(p) for p in parts)
