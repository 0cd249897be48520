"""UNetConfig validation and nanochat tag parsing/formatting."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.config import UNetConfig, parse_tag
from engine.errors import ConfigError


def test_from_tag_builds_the_seed_model():
    cfg = UNetConfig.from_tag("d[6,12]-h[768,1536]", vocab_size=32768, head_dim=128)
    assert cfg.n_stages == 2
    assert cfg.n_head == (6, 12) and cfg.n_kv_head == (6, 12)
    assert cfg.encoder_layers(1) == 6 and cfg.decoder_layers(1) == 6
    assert cfg.tag == "d[6,12]-h[768,1536]"
    assert cfg.padded_vocab_size == 32768


@given(
    depths=st.lists(st.integers(1, 8).map(lambda d: 2 * d), min_size=1, max_size=5),
    head_dim=st.sampled_from([16, 32, 64]),
    data=st.data(),
)
def test_tag_round_trip(depths, head_dim, data):
    widths = [head_dim * data.draw(st.integers(1, 6)) for _ in depths]
    tag = f"d[{','.join(map(str, depths))}]-h[{','.join(map(str, widths))}]"
    cfg = UNetConfig.from_tag(tag, vocab_size=100, head_dim=head_dim)
    assert cfg.tag == tag
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("tag", ["d6-h768", "d[6,12]-h[768]", "d[6,12]h[768,1536]", "d[]-h[]",
                                 "d[6,x]-h[768,1536]", "d[0]-h[64]", "", "D[2]-H[64]"])
def test_malformed_tags_quote_the_tag_and_the_expected_form(tag):
    with pytest.raises(ConfigError) as err:
        parse_tag(tag)
    assert repr(tag) in str(err.value)
    assert "d[6,12]-h[768,1536]" in str(err.value)


def test_tag_spaces_are_ignored_like_nanochat():
    assert parse_tag("d[2, 2]-h[64, 128]") == ((2, 2), (64, 128))


def _cfg(**overrides):
    base = {"sequence_len": 64, "vocab_size": 100, "n_layer": [2, 2], "n_head": [2, 4],
            "n_kv_head": [2, 4], "n_embd": [64, 128]}
    return UNetConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_head": [2, 2], "n_kv_head": [2, 2]}, "share one head_dim"),
        ({"n_kv_head": [2, 3]}, "n_kv_head[1]=3 must divide n_head[1]=4"),
        ({"n_layer": [3, 2]}, "n_layer[0] must be a positive even number"),
        ({"n_layer": [2]}, "n_layer has 1 entries but n_embd has 2"),
        ({"n_embd": [64, -128]}, "n_embd[1] must be a positive integer"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"n_embd": [], "n_layer": [], "n_head": [], "n_kv_head": []}, "at least one stage"),
        ({"n_embd": [64, 130]}, "not divisible by n_head[1]"),
        ({"n_layer": [(1, 2, 3), 2]}, "(encoder, decoder) pair"),
    ],
)
def test_config_errors_say_what_is_wrong(overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        _cfg(**overrides)
    assert message in str(err.value)


def test_explicit_encoder_decoder_split():
    cfg = _cfg(n_layer=[(1, 3), 2])
    assert (cfg.encoder_layers(0), cfg.decoder_layers(0)) == (1, 3)
    assert cfg.tag == "d[4,2]-h[64,128]"
