"""Reproducibility artifact for Ashihara et al., ICASSP 2024 (arXiv 2401.17632).

"What Do Self-Supervised Speech and Speaker Models Learn? New Findings From a
Cross Model Layer-Wise Analysis": layer-wise probing and linear CKA of speech
SSL models (WavLM, HuBERT) and ECAPA-TDNN speaker models.
"""

__version__ = "0.1.0"
