"""Layer similarity: exact streaming linear CKA within and across models.

Public API:
    linear_cka(X, Y, debiased=False)         feature-space CKA of [n, d1] and [n, d2] arrays
    linear_cka_gram(X, Y, debiased=False)    the same through [n, n] Gram matrices (cross-check)
    cka_from_grams(K, L, debiased=False)     CKA of two Gram matrices
    CKAAccumulator                           streaming sums for all layer pairs of two models
    BlockBootstrap                           per-block sums: point estimate + bootstrap intervals
"""

from repro.similarity.accumulator import CKAAccumulator, terms_of
from repro.similarity.bootstrap import BlockBootstrap
from repro.similarity.cka import CKATerms, cka_from_grams, cka_from_terms, linear_cka, linear_cka_gram

__all__ = ["BlockBootstrap", "CKAAccumulator", "CKATerms", "cka_from_grams", "cka_from_terms", "linear_cka",
           "linear_cka_gram", "terms_of"]
