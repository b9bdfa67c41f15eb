"""Models: compositions of layers, each with a config dataclass, keeping the layer contract."""
from .language_model import LanguageModel, LMConfig, Stepper

__all__ = ["LanguageModel", "LMConfig", "Stepper"]
