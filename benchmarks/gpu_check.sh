#!/usr/bin/env bash
# One script for a GPU machine (run from the repository root; needs torch and tabulate, not Ray
# or pytest): the correctness checks first, then the jobs/h100.yaml grid through engine.bench,
# the table last. About 5-10 minutes on one H100.
#   bash benchmarks/gpu_check.sh [--repeats N]
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import torch
from engine.config import UNetConfig
from engine.engine import UNetEngine
from engine.model import UNet
from engine.static import GraphDecoder

print("torch", torch.__version__, "on", torch.cuda.get_device_name())
cfg = UNetConfig.from_tag("d[6,12]-h[768,1536]", vocab_size=32768, head_dim=128, sequence_len=2048)
model = UNet(cfg).init_weights("random", seed=0).to("cuda", torch.bfloat16).eval()
engine = UNetEngine(model)
for batch in (1, 8):
    prompt = torch.randint(0, cfg.vocab_size, (batch, 128), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    decoder = GraphDecoder(engine, batch, 128 + 64)
    with torch.inference_mode():
        eager, state = engine.prefill(prompt, max_len=128 + 64)
        graph = decoder.prefill(prompt)
        worst, same = 0.0, True
        for _ in range(63):
            same &= bool((eager.argmax(-1) == graph.argmax(-1)).all())
            worst = max(worst, (eager - graph).abs().max().item())
            token = eager.argmax(-1)
            eager, graph = engine.decode(state, token), decoder.decode(token)
    print(f"batch {batch}: cached_graph vs cached over 64 steps: tokens identical {same}, "
          f"max |logit diff| {worst:.4f}, graphs captured {decoder.n_captured}")
    assert same, "cached_graph tokens differ from eager cached"
PY
python benchmarks/engine_sweep.py --device cuda --dtype bfloat16 "$@"
