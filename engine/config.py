"""Model configuration of the hierarchical (UNet) transformer and nanochat model tags.

A config lists one entry per stage: stage s has width ``n_embd[s]`` and ``n_layer[s]`` blocks,
half in the encoder and half in the decoder (or an explicit ``(encoder, decoder)`` pair).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import ConfigError

# nanochat sizes its rotary table at 10x the training length; positions past it cannot be encoded.
ROTARY_LEN_FACTOR = 10
VOCAB_PAD_MULTIPLE = 64

_TAG_RE = re.compile(r"^d\[(\d+(?:,\d+)*)\]-h\[(\d+(?:,\d+)*)\]$")
_TAG_FORM = "d[<depth>,...]-h[<width>,...], e.g. 'd[6,12]-h[768,1536]'"

LayerCount = int | tuple[int, int]


def _as_tuple(name: str, value: Any) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    raise ConfigError(f"{name} must be a list with one entry per stage, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Sizes of a UNet language model, one entry per stage for the list fields."""

    sequence_len: int
    vocab_size: int
    n_layer: tuple[LayerCount, ...]
    n_head: tuple[int, ...]
    n_kv_head: tuple[int, ...]
    n_embd: tuple[int, ...]
    _split: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_kv_head", "n_embd"):
            object.__setattr__(self, name, _as_tuple(name, getattr(self, name)))
        n_stages = len(self.n_embd)
        if n_stages == 0:
            raise ConfigError("a UNet needs at least one stage (n_embd is empty)")
        for name in ("n_layer", "n_head", "n_kv_head"):
            if len(getattr(self, name)) != n_stages:
                raise ConfigError(
                    f"{name} has {len(getattr(self, name))} entries but n_embd has {n_stages}: "
                    "give one entry per stage"
                )
        for name in ("sequence_len", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        object.__setattr__(self, "_split", tuple(self._layer_split(s) for s in range(n_stages)))
        head_dims = set()
        for s in range(n_stages):
            width, heads, kv_heads = self.n_embd[s], self.n_head[s], self.n_kv_head[s]
            for name, value in (("n_embd", width), ("n_head", heads), ("n_kv_head", kv_heads)):
                if not isinstance(value, int) or value <= 0:
                    raise ConfigError(f"{name}[{s}] must be a positive integer, got {value!r}")
            if width % heads:
                raise ConfigError(f"n_embd[{s}]={width} is not divisible by n_head[{s}]={heads}")
            if heads % kv_heads:
                raise ConfigError(
                    f"n_kv_head[{s}]={kv_heads} must divide n_head[{s}]={heads} (GQA groups)"
                )
            head_dims.add(width // heads)
        if len(head_dims) != 1:
            dims = [self.n_embd[s] // self.n_head[s] for s in range(n_stages)]
            raise ConfigError(f"all stages must share one head_dim, got {dims} (n_embd / n_head)")
        if next(iter(head_dims)) % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {head_dims}")

    def _layer_split(self, s: int) -> tuple[int, int]:
        layers = self.n_layer[s]
        if isinstance(layers, tuple):
            if len(layers) != 2 or not all(isinstance(n, int) and n >= 0 for n in layers):
                raise ConfigError(f"n_layer[{s}] must be an (encoder, decoder) pair, got {layers}")
            return layers
        if not isinstance(layers, int) or layers <= 0 or layers % 2:
            raise ConfigError(
                f"n_layer[{s}] must be a positive even number (half encoder, half decoder) "
                f"or an (encoder, decoder) pair, got {layers!r}"
            )
        return (layers // 2, layers // 2)

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.n_embd)

    @property
    def head_dim(self) -> int:
        return self.n_embd[0] // self.n_head[0]

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def rotary_len(self) -> int:
        return self.sequence_len * ROTARY_LEN_FACTOR

    @property
    def max_len(self) -> int:
        """Longest sequence (prompt + generated tokens) the model can position-encode."""
        return self.rotary_len

    def encoder_layers(self, stage: int) -> int:
        return self._split[stage][0]

    def decoder_layers(self, stage: int) -> int:
        return self._split[stage][1]

    @property
    def tag(self) -> str:
        """nanochat's model tag, e.g. ``d[6,12]-h[768,1536]`` (depth = blocks per stage)."""
        depths = ",".join(str(sum(self._split[s])) for s in range(self.n_stages))
        return f"d[{depths}]-h[{','.join(map(str, self.n_embd))}]"

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def from_tag(
        cls,
        tag: str,
        *,
        vocab_size: int,
        head_dim: int = 128,
        sequence_len: int = 2048,
        n_kv_head: tuple[int, ...] | None = None,
    ) -> UNetConfig:
        """Build a config from a nanochat tag: ``UNetConfig.from_tag("d[2,2]-h[64,128]", vocab_size=300, head_dim=32)``."""
        depths, widths = parse_tag(tag)
        for width in widths:
            if width % head_dim:
                raise ConfigError(f"model tag {tag!r}: width {width} is not a multiple of head_dim={head_dim}")
        n_head = tuple(w // head_dim for w in widths)
        return cls(
            sequence_len=sequence_len,
            vocab_size=vocab_size,
            n_layer=depths,
            n_head=n_head,
            n_kv_head=tuple(n_kv_head) if n_kv_head is not None else n_head,
            n_embd=widths,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """From a nanochat ``model_config`` mapping (lists per stage)."""
        keys = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ConfigError(f"model_config lacks {missing}")
        return cls(**{k: data[k] for k in keys})

    def to_dict(self) -> dict[str, Any]:
        """The nanochat ``model_config`` mapping (JSON-ready lists)."""
        data = asdict(self)
        data.pop("_split")
        return {
            key: [list(v) if isinstance(v, tuple) else v for v in value] if isinstance(value, tuple) else value
            for key, value in data.items()
        }


def parse_tag(tag: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split ``d[6,12]-h[768,1536]`` into depths (6, 12) and widths (768, 1536)."""
    match = _TAG_RE.match(tag.replace(" ", "")) if isinstance(tag, str) else None
    if not match:
        raise ConfigError(f"malformed model tag {tag!r}: expected {_TAG_FORM}")
    depths = tuple(int(v) for v in match.group(1).split(","))
    widths = tuple(int(v) for v in match.group(2).split(","))
    if len(depths) != len(widths):
        raise ConfigError(
            f"malformed model tag {tag!r}: {len(depths)} depths but {len(widths)} widths; "
            f"expected {_TAG_FORM}"
        )
    if any(v <= 0 for v in depths + widths):
        raise ConfigError(f"malformed model tag {tag!r}: depths and widths must be positive; expected {_TAG_FORM}")
    return depths, widths
