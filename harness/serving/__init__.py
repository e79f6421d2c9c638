"""Serving machinery the serving, accuracy and throughput stages share (stdlib-only imports).

- `server`: `ServerSpec`, `running()` (start, readiness, smoke request, group teardown),
  `ServerFailed`; `logwatch`: fatal log lines and their hints; `client.run_client`: a client
  command run while the server is watched.
- `commands`: lm-eval and `vllm bench serve` command lines; `lmeval`: local gsm8k-format tasks
  and the results parser; `bench`: the benchmark's JSON result parser.
- `inc_plugin` / `cpu_moe` (+ `vllm_entry/`): the vLLM general plugin that gives vLLM's CPU
  build `--quantization inc` with QUANT_CONFIG (imported only inside vLLM processes).
"""

from harness.serving.client import run_client
from harness.serving.server import Server
from harness.serving.server import ServerFailed
from harness.serving.server import ServerSpec
from harness.serving.server import running

__all__ = ["Server", "ServerFailed", "ServerSpec", "run_client", "running"]
