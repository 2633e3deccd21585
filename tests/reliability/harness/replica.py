"""One replica process: uvicorn serving the real PauseGateMiddleware in front of the fake engine.

    python -m reliability.harness.replica --port P --name r1 --log tokens.log [--interval 0.01]
        [--versions '{"a0": 3}']

Configured like a real replica: PAUSESVC_* environment variables (PAUSESVC_REDIS_URL, ...).
"""

from __future__ import annotations

import argparse
import json
import logging

import uvicorn
from pausesvc_vllm import PauseGateMiddleware

from reliability.harness.fake_engine import FakeEngine, ReplicaApp, install_fake_lora_request


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--log", default=None)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--versions", default="{}")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s {args.name} %(name)s %(levelname)s %(message)s"
    )
    install_fake_lora_request()
    engine = FakeEngine(args.name, args.log, args.interval, json.loads(args.versions))
    app = ReplicaApp(engine, PauseGateMiddleware)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
