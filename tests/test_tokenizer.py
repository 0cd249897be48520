"""Byte-level and nanochat (tiktoken pickle) tokenizers; hostile tokenizer.pkl files."""

import copyreg
import io
import os
import pickle
import re
from pathlib import Path

import pytest

import engine.tokenizer as tokenizer_module
from engine.errors import EngineError
from engine.tokenizer import BOS, ByteTokenizer, TiktokenTokenizer, load_tokenizer

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


# --- untrusted tokenizer.pkl (issue 15, category 10) ----------------------------------------------
def _write(path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def _encoding():
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"ab"] = 256
    return tiktoken.Encoding(name="tiny", pat_str=r"\S+|\s+", mergeable_ranks=ranks,
                             special_tokens={BOS: 257})


def test_a_real_pickled_encoding_loads(tmp_path):
    enc = _encoding()
    tok = TiktokenTokenizer.from_pickle(_write(tmp_path / "tokenizer.pkl", enc))
    assert tok.encode("abab c") == enc.encode_ordinary("abab c") == [256, 256, 32, 99]
    assert tok.bos_token_id == 257 and tok.vocab_size == 258
    assert tok.decode(tok.encode("naïve café")) == "naïve café"


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("payload", ["system", "eval", "by_name", "wrong_types", "not_encoding"])
def test_a_hostile_pickle_is_refused_in_one_line(tmp_path, payload):
    enc = _encoding()
    marker = tmp_path / "pwned"
    obj = {
        "system": RunsACommand(marker),
        "eval": CallsEval(),
        "by_name": None,
        "wrong_types": None,
        "not_encoding": [1, 2, 3],
    }[payload]
    path = tmp_path / "tokenizer.pkl"
    if payload == "by_name":  # a registered encoding pickles as its name (tiktoken would fetch it)
        path.write_bytes(_pickle_with_state(enc, "cl100k_base"))
    elif payload == "wrong_types":
        path.write_bytes(_pickle_with_state(enc, {"name": "tiny", "pat_str": "x",
                                                  "mergeable_ranks": {"a": "b"},
                                                  "special_tokens": {}}))
    else:
        _write(path, obj)
    with pytest.raises(EngineError) as info:
        TiktokenTokenizer.from_pickle(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"unreadable tokenizer {path}: ")
    expected = {
        "system": "refusing to load posix.system",
        "eval": "refusing to load builtins.eval",
        "by_name": "not a pickled tiktoken Encoding with its own ranks",
        "wrong_types": "the Encoding's state has the wrong types",
        "not_encoding": "not a pickled tiktoken Encoding",
    }[payload]
    assert expected in message
    assert not marker.exists()


def _pickle_with_state(enc, state) -> bytes:
    """A pickle of an Encoding whose __setstate__ receives `state` (as a crafted file would)."""

    class Crafted(pickle.Pickler):
        def reducer_override(self, obj):
            if obj is enc:
                return (copyreg.__newobj__, (type(enc),), state)
            return NotImplemented

    out = io.BytesIO()
    Crafted(out, protocol=4).dump(enc)
    return out.getvalue()


def test_a_huge_truncated_or_special_pickle_file_is_refused(tmp_path, monkeypatch):
    path = _write(tmp_path / "tokenizer.pkl", _encoding())
    Path(path).write_bytes(Path(path).read_bytes()[:-20])
    with pytest.raises(EngineError, match="unreadable tokenizer .*tokenizer.pkl: "):
        TiktokenTokenizer.from_pickle(path)
    fifo = tmp_path / "fifo.pkl"
    os.mkfifo(fifo)
    with pytest.raises(EngineError, match="fifo.pkl: not a regular file"):
        TiktokenTokenizer.from_pickle(fifo)
    monkeypatch.setattr(tokenizer_module, "MAX_PICKLE_BYTES", 10)
    with pytest.raises(EngineError, match="larger than 0 MiB"):
        TiktokenTokenizer.from_pickle(_write(tmp_path / "big.pkl", _encoding()))


def test_checkpoint_loading_never_uses_plain_pickle():
    """torch.load with weights_only=True everywhere; pickle.load nowhere in the project."""
    root = Path(__file__).resolve().parents[1]
    sources = [p for d in ("engine", "workers", "orchestrator", "benchmarks")
               for p in (root / d).rglob("*.py")]
    for source in sources:
        text = source.read_text()
        assert "pickle.load(" not in text and "pickle.loads(" not in text, source
        for call in re.findall(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call, f"{source}: torch.load({call})"
