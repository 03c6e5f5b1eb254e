"""leakaudit: audit an image classifier's weights for training-data leakage."""

__version__ = "0.1.0"
