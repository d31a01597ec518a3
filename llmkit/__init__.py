"""llmkit: train, fine-tune, generate with and evaluate language models from one typed CLI."""

__version__ = "0.1.0"
