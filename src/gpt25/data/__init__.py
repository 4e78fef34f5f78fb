"""Data pipeline: text sources -> parallel tokenization -> token shards -> resumable batches.

sources reads what --source names; prepare (workers run by parallel) and raw write data folders in shards'
format; loader and conversations (`gpt25 sft`) batch training data; default_corpus builds the embedded data
sets. The loaders import torch; this package's top level does not. Manual: docs/data.md.
"""

from gpt25.data.shards import iter_shards, load_split, read_manifest

__all__ = ["iter_shards", "load_split", "read_manifest"]
