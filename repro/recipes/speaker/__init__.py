"""Speaker-model training: supervised ECAPA-TDNN (AAM-softmax) and DINO speaker SSL.

`repro train --recipe supervised|dino --profile P` (see `repro.recipes.speaker.train`).
"""
