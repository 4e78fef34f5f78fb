"""Data pipeline: text sources -> parallel tokenization -> token shards -> resumable batches.

    gpt25.data.sources   documents from files, folders, globs, JSONL/Parquet, Hugging Face, python-docs
    gpt25.data.prepare   PrepareConfig + prepare(): streaming, multi-process tokenization into shards
    gpt25.data.shards    the shard format, its validating reader and manifest.json
    gpt25.data.loader    get_batch (random windows) and ShardLoader (rank-aware, resumable)

The loader imports torch; this package's top level does not.
"""

from gpt25.data.shards import iter_shards, load_split, read_manifest

__all__ = ["iter_shards", "load_split", "read_manifest"]
