"""A controller process that takes a pause and then just sits there (to be SIGKILLed).

    python -m reliability.harness.controller_proc NAME HOLDER [TTL]

With TTL it holds a lease through ``PauseClient.paused(..., ttl=TTL)`` (renewed every TTL/3
while alive); without, a plain pause. Prints ``HELD <token>`` once the pause is in place.
"""

from __future__ import annotations

import sys
import time

from pausesvc import PauseClient


def main() -> None:
    name, holder = sys.argv[1], sys.argv[2]
    ttl = float(sys.argv[3]) if len(sys.argv) > 3 else None
    with PauseClient() as c:  # PAUSESVC_REDIS_URL / PAUSESVC_NAMESPACE
        if ttl is None:
            g = c.pause(name, holder=holder, reason="weight swap (no lease)")
            print(f"HELD {g.token}", flush=True)
            while True:
                time.sleep(1)
        with c.paused(name, holder=holder, ttl=ttl, reason="weight swap (lease)") as g:
            print(f"HELD {g.token}", flush=True)
            while True:
                time.sleep(1)


if __name__ == "__main__":
    main()
