"""Fine-tuning for band-gap regression with PyTorch Lightning: configs, data, the module, fitting."""

from mofbalora.training.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config"]
