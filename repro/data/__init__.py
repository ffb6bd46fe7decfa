"""Corpora: the task manifest format, the synthetic espeak-ng corpus, and the real corpora
(catalogue, verified downloads, preparation into task manifests)."""
