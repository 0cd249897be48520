"""Pure-PyTorch engine for hierarchical (UNet) transformer language models.

Token ids in, token ids out: the model (``UNet``), nanochat checkpoints, naive generation (the
oracle) and the exact KV-cached ``UNetEngine``. It never imports Ray or the orchestrator.
"""

from engine.bench import BenchResult, BenchSpec, BenchSpecError, measure_cell
from engine.benchmark import BenchmarkResult, ComparisonResult, InferenceBenchmark
from engine.cache import DecodeState, kv_cache_bytes
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import UNetConfig
from engine.engine import UNetEngine
from engine.errors import CheckpointError, ConfigError, EngineError, GenerationError
from engine.model import UNet
from engine.naive import naive_generate
from engine.profiler import LatencyStats, MemoryProfiler, SimpleTimer, TorchProfiler
from engine.tokenizer import ByteTokenizer, TiktokenTokenizer, load_tokenizer

__all__ = [
    "BenchResult",
    "BenchSpec",
    "BenchSpecError",
    "BenchmarkResult",
    "ByteTokenizer",
    "CheckpointError",
    "ComparisonResult",
    "ConfigError",
    "DecodeState",
    "EngineError",
    "GenerationError",
    "InferenceBenchmark",
    "LatencyStats",
    "MemoryProfiler",
    "SimpleTimer",
    "TiktokenTokenizer",
    "TorchProfiler",
    "UNet",
    "UNetConfig",
    "UNetEngine",
    "kv_cache_bytes",
    "load_checkpoint",
    "load_tokenizer",
    "measure_cell",
    "naive_generate",
    "save_checkpoint",
]
