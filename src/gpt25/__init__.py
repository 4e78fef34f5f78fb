"""gpt25: train a GPT-2-class language model from scratch, every piece written here."""

__version__ = "0.1.0"
