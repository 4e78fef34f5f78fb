"""Byte-level BPE tokenizer (GPT-2 style): `train_bpe`, and `Tokenizer` for encoding, decoding, saving and interop.

Manual: docs/tokenizer.md
"""

from gpt25.tokenizer.codec import END_OF_TEXT, Tokenizer
from gpt25.tokenizer.pretokenize import GPT2_PATTERN
from gpt25.tokenizer.train import train_bpe

__all__ = ["END_OF_TEXT", "GPT2_PATTERN", "Tokenizer", "train_bpe"]
