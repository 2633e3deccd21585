"""For development and tests, not for production: an embedded ``redis-server``
(:class:`~pausesvc.devtools.embedded.EmbeddedRedis`) and the quick-start demo."""
