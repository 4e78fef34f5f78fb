"""Builds the optional C extension (gpt25.tokenizer._pretokens); everything else is in pyproject.toml.

Without a C compiler the build still succeeds and the tokenizer uses its pure-Python path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gpt25.tokenizer._pretokens",
            ["src/gpt25/tokenizer/_pretokens.c"],
            extra_compile_args=["-O3"] if __import__("sys").platform != "win32" else [],
            optional=True,
        )
    ]
)
