"""Tokenizers beside the engine (which itself only sees token ids).

``ByteTokenizer`` needs no files: ids 0..255 are bytes, 256 is ``<|bos|>``. ``TiktokenTokenizer``
reads nanochat's ``tokenizer/tokenizer.pkl`` (a pickled ``tiktoken.Encoding``; needs tiktoken).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Protocol

from engine.errors import EngineError

BOS = "<|bos|>"


class Tokenizer(Protocol):
    vocab_size: int
    bos_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus ``<|bos|>`` = 256."""

    vocab_size = 257
    bos_token_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class TiktokenTokenizer:
    """nanochat's BPE tokenizer from ``tokenizer.pkl``."""

    def __init__(self, encoding):
        self.encoding = encoding
        self.vocab_size = encoding.n_vocab
        self.bos_token_id = encoding.encode_single_token(BOS)

    @classmethod
    def from_pickle(cls, path: str | os.PathLike) -> TiktokenTokenizer:
        try:
            import tiktoken  # noqa: F401  (unpickling needs it importable)
        except ImportError:
            raise EngineError(f"{path} needs the tiktoken package: pip install 'unet-bench[tiktoken]'") from None
        try:
            with open(path, "rb") as f:
                return cls(pickle.load(f))
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
            raise EngineError(f"unreadable tokenizer {path}: {err}") from None

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)


def load_tokenizer(base: str | os.PathLike | None = None) -> Tokenizer:
    """nanochat's tokenizer under ``<base>/tokenizer/`` when present, else the byte tokenizer."""
    base = base if base is not None else os.environ.get("NANOCHAT_BASE_DIR")
    if base:
        path = Path(base) / "tokenizer" / "tokenizer.pkl"
        if path.is_file():
            return TiktokenTokenizer.from_pickle(path)
    return ByteTokenizer()
