"""Pre-training speech SSL models (transformers' HubertModel, WavLMModel) by masked prediction: HuBERT's first
iteration (k-means clusters of MFCC frames as targets) and WavLM's denoising variant (`repro train --recipe
hubert|wavlm`). Reached only through `repro.recipes`."""
