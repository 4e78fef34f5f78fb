"""Byte-level BPE tokenizer (GPT-2 style): training, encoding/decoding, saving and interop.

    from gpt25.tokenizer import Tokenizer, train_bpe
    vocab, merges = train_bpe("corpus.txt", vocab_size=8192, special_tokens=["<|endoftext|>"])
    tokenizer = Tokenizer(vocab, merges, ["<|endoftext|>"])
    tokenizer.save("tok/"); ids = Tokenizer.load("tok/").encode("Hello<|endoftext|>")
"""

from gpt25.tokenizer.codec import END_OF_TEXT, Tokenizer
from gpt25.tokenizer.pretokenize import GPT2_PATTERN
from gpt25.tokenizer.train import train_bpe

__all__ = ["END_OF_TEXT", "GPT2_PATTERN", "Tokenizer", "train_bpe"]
