"""Speaker-model training: supervised ECAPA-TDNN (AAM-softmax) and DINO speaker SSL.

`repro train-speaker --recipe supervised|dino --profile P` (see `repro.speaker.train`).
"""
