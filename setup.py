"""Builds the optional C extensions gpt25.tokenizer._pretokens and _bpe; the rest is in pyproject.toml.

Without a C compiler the build still succeeds and the tokenizer uses its pure-Python path.
"""

from setuptools import Extension, setup

COMPILE_ARGS = ["-O3"] if __import__("sys").platform != "win32" else []

setup(
    ext_modules=[
        Extension(f"gpt25.tokenizer.{name}", [f"src/gpt25/tokenizer/{name}.c"], extra_compile_args=COMPILE_ARGS,
                  optional=True)
        for name in ("_pretokens", "_bpe")
    ]
)
