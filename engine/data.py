"""Training text for ``engine.train``: read, tokenize, split, and cut into next-token windows.

A corpus is one ``.txt`` file or a directory of them (read recursively, in sorted order). Each
file is one document: ``<|bos|>`` followed by its tokens. The last ``VAL_FRACTION`` of every
document is held out for validation, so the held-out text samples every file.

    corpus = load_corpus(DEFAULT_DATA_DIR, ByteTokenizer(), seq_len=256)
    x, y = sample_batch(corpus.train, batch_size=8, seq_len=256, seed=0, step=0)  # [8, 256] each

Without ``--data`` the trainer uses ``DEFAULT_DATA_DIR`` (``engine/data/*.txt``), text written for
this project and released as CC0 (see ``engine/data/README.md``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import DataError
from engine.tokenizer import ByteTokenizer, Tokenizer

DEFAULT_DATA_DIR = Path(__file__).with_name("data")
VAL_FRACTION = 0.1


@dataclass(frozen=True, kw_only=True)
class Corpus:
    """Token ids of the training and held-out parts, and the bytes each token id stands for."""

    train: torch.Tensor  # int64 [N_train]
    val: torch.Tensor  # int64 [N_val]
    token_bytes: torch.Tensor  # int64 [vocab_size]: UTF-8 bytes of each id, 0 for special tokens
    files: tuple[str, ...]
    text_bytes: int

    def describe(self) -> dict:
        """JSON-ready summary for checkpoint metadata."""
        return {
            "files": list(self.files),
            "text_bytes": self.text_bytes,
            "train_tokens": int(self.train.numel()),
            "val_tokens": int(self.val.numel()),
        }


def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The ``.txt`` files a data path names: the file itself, or those under a directory."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if not path.is_dir():
        raise DataError(f"data path is neither a file nor a directory: {path}")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"data directory {path} holds no .txt files")
    return files


def read_documents(files: list[Path]) -> list[str]:
    """Each file's text (UTF-8); refuses unreadable files and a corpus without any text."""
    docs = []
    for file in files:
        try:
            docs.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(
                f"data file {file} is not UTF-8 text: {err.reason} at byte {err.start}"
            ) from None
        except OSError as err:
            raise DataError(f"cannot read data file {file}: {err.strerror}") from None
    if not any(doc.strip() for doc in docs):
        where = files[0] if len(files) == 1 else f"{len(files)} files under {files[0].parent}"
        raise DataError(f"data is empty: no text in {where}")
    return [doc for doc in docs if doc.strip()]


def token_byte_lengths(tokenizer: Tokenizer) -> torch.Tensor:
    """UTF-8 bytes per token id (0 for special tokens), for bits-per-byte."""
    if isinstance(tokenizer, ByteTokenizer):
        lengths = [1] * 256 + [0] * (tokenizer.vocab_size - 256)
        return torch.tensor(lengths, dtype=torch.long)
    encoding = tokenizer.encoding  # TiktokenTokenizer
    special = {encoding.encode_single_token(t) for t in encoding.special_tokens_set}
    lengths = []
    for i in range(tokenizer.vocab_size):
        try:
            lengths.append(0 if i in special else len(encoding.decode_single_token_bytes(i)))
        except KeyError:  # an unused id
            lengths.append(0)
    return torch.tensor(lengths, dtype=torch.long)


def split_documents(
    docs: list[list[int]], bos: int, seq_len: int, val_fraction: float = VAL_FRACTION
) -> tuple[list[int], list[int]]:
    """Training ids (``bos`` + head of each document) and held-out ids (the tails).

    Falls back to holding out the tail of the whole stream when per-document tails are too short
    for one window; refuses data that cannot fill one window of each.
    """
    window = seq_len + 1
    train: list[int] = []
    val: list[int] = []
    for ids in docs:
        cut = len(ids) - int(len(ids) * val_fraction)
        train += [bos] + ids[:cut]
        val += ids[cut:]
    if len(train) >= window and len(val) >= window:
        return train, val
    stream = [t for ids in docs for t in [bos] + ids]
    if len(stream) < 2 * window:
        raise DataError(
            f"data too small: {len(stream)} tokens cannot fill 2 sequences of --seq-len {seq_len} "
            f"(one to train, one to validate, {window} tokens each); add text or lower --seq-len"
        )
    n_val = min(max(window, int(len(stream) * val_fraction)), len(stream) - window)
    return stream[:-n_val], stream[-n_val:]


def load_corpus(
    path: str | os.PathLike, tokenizer: Tokenizer, seq_len: int, val_fraction: float = VAL_FRACTION
) -> Corpus:
    """Read, tokenize and split the corpus at ``path`` (a ``.txt`` file or a directory)."""
    files = corpus_files(path)
    texts = read_documents(files)
    docs = [tokenizer.encode(text) for text in texts]
    train, val = split_documents(docs, tokenizer.bos_token_id, seq_len, val_fraction)
    return Corpus(
        train=torch.tensor(train, dtype=torch.long),
        val=torch.tensor(val, dtype=torch.long),
        token_bytes=token_byte_lengths(tokenizer),
        files=tuple(str(f) for f in files),
        text_bytes=sum(len(t.encode("utf-8")) for t in texts),
    )


def batch_generator(seed: int, step: int) -> torch.Generator:
    """The generator that draws step ``step``'s batch: batches depend on (seed, step) only, so a
    resumed run sees exactly the batches an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def sample_batch(
    tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows: inputs x [B, T] and next-token targets y [B, T]."""
    starts = torch.randint(
        0, tokens.numel() - seq_len, (batch_size,), generator=batch_generator(seed, step)
    )
    windows = tokens[starts[:, None] + torch.arange(seq_len + 1)]
    return windows[:, :-1], windows[:, 1:]


def val_windows(tokens: torch.Tensor, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping held-out windows [N, seq_len + 1] from the start, at most ~``max_tokens``."""
    count = tokens.numel() // (seq_len + 1)
    if max_tokens is not None:
        count = min(count, max(1, max_tokens // seq_len))
    return tokens[: count * (seq_len + 1)].view(count, seq_len + 1)
