"""Data pipeline: text sources -> parallel tokenization -> token shards -> resumable batches.

    gpt25.data.sources   source specs checked and read (files, JSONL/Parquet, the Hugging Face Hub, offline
                         errors, `gpt25 data download`), cut into the byte-range tasks workers read
    gpt25.data.default_corpus  the embedded python-docs corpus and python-docs-chat set (stdlib docstrings)
    gpt25.data.prepare   PrepareConfig + prepare(): streaming train/val split into shards, resume
    gpt25.data.parallel  ordered, memory-bounded multi-process tokenization
    gpt25.data.shards    the shard format, its writers, validating reader and manifest.json
    gpt25.data.raw       import-raw: headerless token files checked, then referenced or copied
    gpt25.data.loader    ShardLoader (rank-aware, resumable); SeededBatches, shared with PackedLoader
    gpt25.data.conversations  conversation sources, skip counts, packing with a loss mask, PackedLoader

The loaders import torch; this package's top level does not.
"""

from gpt25.data.shards import iter_shards, load_split, read_manifest

__all__ = ["iter_shards", "load_split", "read_manifest"]
