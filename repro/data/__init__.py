"""Corpora: the task manifest format, the synthetic espeak-ng corpus, and (later) real corpora."""
