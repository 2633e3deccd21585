"""The Redis protocol of pausesvc, with no I/O: what is stored where, what the scripts do, what
the events say, and the rules a view follows to stay equal to Redis.

- :mod:`~pausesvc.protocol.keys`: every key and channel name, and the name rules.
- :mod:`~pausesvc.protocol.scripts`: the Lua scripts (``lua/``), each stating its guarantees.
- :mod:`~pausesvc.protocol.models`: the records (``AdapterState``, ``PauseEvent``, ...) and
  their wire form.
- :mod:`~pausesvc.protocol.codec`: script replies -> records.
- :mod:`~pausesvc.protocol.validate`: the checks every argument passes before it reaches Redis.
- :mod:`~pausesvc.protocol.view`: the :class:`~pausesvc.protocol.view.View` state machine that
  the async watcher and the blocking client's ``events()`` both drive.

The data path: a request -> the gate (``pausesvc_vllm``) -> a view
(:class:`~pausesvc.protocol.view.View`) <- the watcher (:mod:`pausesvc.watcher`) <- Redis.
"""
