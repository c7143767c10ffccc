"""mofbalora: band-gap fine-tuning of pretrained crystal graph models on MOFs, with LoRA and
Bayesian LoRA (BaLoRA) uncertainty.

Pipeline: data -> featurise -> backbones -> adapters -> training -> uncertainty -> analysis.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
