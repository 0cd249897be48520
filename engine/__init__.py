"""Pure-PyTorch engine for hierarchical (UNet) transformer language models.

Token ids in, token ids out: the model (``UNet``), nanochat checkpoints, naive generation (the
oracle) and the exact KV-cached ``UNetEngine``. It never imports Ray or the orchestrator.
"""

from engine.cache import DecodeState, kv_cache_bytes
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import UNetConfig
from engine.engine import UNetEngine
from engine.errors import CheckpointError, ConfigError, EngineError, GenerationError
from engine.model import UNet
from engine.naive import naive_generate
from engine.tokenizer import ByteTokenizer, TiktokenTokenizer, load_tokenizer

__all__ = [
    "ByteTokenizer", "CheckpointError", "ConfigError", "DecodeState", "EngineError",
    "GenerationError", "TiktokenTokenizer", "UNet", "UNetConfig", "UNetEngine",
    "kv_cache_bytes", "load_checkpoint", "load_tokenizer", "naive_generate", "save_checkpoint",
]
