"""Tokenizers beside the engine (which itself only sees token ids).

``ByteTokenizer`` needs no files: ids 0..255 are bytes, 256 is ``<|bos|>``. ``TiktokenTokenizer``
reads nanochat's ``tokenizer/tokenizer.pkl`` (a pickled ``tiktoken.Encoding``; needs tiktoken).

A checkpoint directory may come from anyone, and ``pickle.load`` runs whatever a pickle names. So
the pickle is read by ``load_encoding``: a restricted unpickler that resolves one global,
``tiktoken.core.Encoding``, to an inert stand-in that only collects its state; the state is then
checked (name, pattern, ``bytes -> int`` ranks, ``str -> int`` special tokens) and handed to
``tiktoken.Encoding(...)``. Anything else (``os.system``, ``builtins.eval``, a registered encoding
fetched by name) is refused in one line.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
from pathlib import Path
from typing import Any, Protocol

from engine.errors import EngineError

BOS = "<|bos|>"
MAX_PICKLE_BYTES = 256 * 2**20  # nanochat's 65k-token tokenizer.pkl is about 1 MB
ENCODING_KEYS = {"name", "pat_str", "mergeable_ranks", "special_tokens"}


class _EncodingState:
    """Stands in for ``tiktoken.core.Encoding`` while unpickling: keeps the state, runs nothing."""

    def __init__(self, *args: Any) -> None:
        if args:
            raise pickle.UnpicklingError("Encoding is rebuilt from its state, not from arguments")
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _EncodingUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a tokenizer.pkl may only hold a tiktoken Encoding"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids: not a tiktoken Encoding pickle")


def _checked_state(obj: Any) -> dict:
    """The Encoding constructor's keyword arguments, after checking their types."""
    state = obj.state if isinstance(obj, _EncodingState) else None
    if not isinstance(state, dict) or set(state) != ENCODING_KEYS:
        got = type(obj).__name__ if not isinstance(obj, _EncodingState) else repr(state)[:80]
        raise pickle.UnpicklingError(f"not a pickled tiktoken Encoding with its own ranks "
                                     f"(expected the keys {sorted(ENCODING_KEYS)}, got {got})")
    ranks, special = state["mergeable_ranks"], state["special_tokens"]
    ok = (isinstance(state["name"], str) and isinstance(state["pat_str"], str)
          and isinstance(ranks, dict) and isinstance(special, dict)
          and all(type(k) is bytes and type(v) is int for k, v in ranks.items())
          and all(type(k) is str and type(v) is int for k, v in special.items()))
    if not ok:
        raise pickle.UnpicklingError("the Encoding's state has the wrong types (name and pat_str "
                                     "text, ranks bytes -> int, special tokens text -> int)")
    return state


def load_encoding(path: str | os.PathLike) -> Any:
    """A ``tiktoken.Encoding`` from a pickle file, without running code the file names.

    Raises ``EngineError`` (one line) for a file that is not a plain pickled Encoding.
    """
    try:
        import tiktoken
    except ImportError:
        raise EngineError(
            f"{path} needs the tiktoken package: pip install 'unet-bench[tiktoken]'"
        ) from None
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # a FIFO never blocks
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise pickle.UnpicklingError("not a regular file")
            data = f.read(MAX_PICKLE_BYTES + 1)
        if len(data) > MAX_PICKLE_BYTES:
            raise pickle.UnpicklingError(f"larger than {MAX_PICKLE_BYTES // 2**20} MiB")
        state = _checked_state(_EncodingUnpickler(io.BytesIO(data)).load())
        return tiktoken.Encoding(**state)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
            IndexError, AttributeError, MemoryError, RecursionError) as err:
        raise EngineError(f"unreadable tokenizer {path}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0][:300] if lines else "") or type(err).__name__


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
        """nanochat's ``tokenizer.pkl``, read by the restricted ``load_encoding``."""
        encoding = load_encoding(path)
        try:
            return cls(encoding)
        except (KeyError, ValueError) as err:  # no <|bos|> special token
            raise EngineError(f"unusable tokenizer {path}: {_one_line(err)}") from None

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
