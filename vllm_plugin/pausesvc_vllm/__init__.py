"""pausesvc-vllm: the per-adapter pause gate for vLLM servers.

    PAUSESVC_REDIS_URL=redis://... python -m vllm.entrypoints.openai.api_server ... \\
        --middleware pausesvc_vllm.PauseGateMiddleware

Importing this package never imports vLLM (the gate reads ``app.state.engine_client`` at run
time), so it can be tested, and configured, without it.
"""

from pausesvc_vllm._gate import PauseGateMiddleware
from pausesvc_vllm._runtime import GateRuntime
from pausesvc_vllm._stats import GateStats

__version__ = "0.1.0"

__all__ = ["GateRuntime", "GateStats", "PauseGateMiddleware", "__version__"]
