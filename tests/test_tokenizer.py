"""Byte-level and nanochat (tiktoken pickle) tokenizers."""

import pytest

from engine.tokenizer import ByteTokenizer, TiktokenTokenizer, load_tokenizer

SAMPLES = ["", "hello world", "naïve café — 東京 🚀", "line\nbreaks\tand tabs"]


@pytest.mark.parametrize("text", SAMPLES)
def test_bytes_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_byte_tokenizer_is_the_default_without_files(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOCHAT_BASE_DIR", raising=False)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, ByteTokenizer) and tok.bos_token_id == 256 and tok.vocab_size == 257


def test_nanochat_pickle(nanochat_base):
    pytest.importorskip("tiktoken")
    tok = load_tokenizer(nanochat_base)
    assert isinstance(tok, TiktokenTokenizer)
    assert tok.encode("hello world") == [266, 267]
    assert tok.vocab_size == 300 and tok.bos_token_id == 291
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
