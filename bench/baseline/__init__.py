"""The prior art, implemented faithfully: SkyRL's per-replica, in-memory, HTTP fan-out pause.

``app``: each replica keeps ``paused_loras: dict[str, asyncio.Event]`` (set = running) and gates
``/v1/completions`` and ``/v1/chat/completions`` with it in a pure-ASGI middleware; the
``/skyrl/v1/{abort,resume}_lora_requests`` and ``wait_lora_unpaused`` endpoints flip and expose
it. ``fanout``: the controller POSTs to every replica concurrently - SkyRL's shared
``httpx.AsyncClient``, one client per replica, and a lean raw HTTP/1.1 keep-alive client.
"""
