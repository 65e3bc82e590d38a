"""An example search service that embeds the engine: an ASGI app (``app.py``) over an
in-memory catalog (``catalog.py``), with the Redis session store and Redis flags, and a load
script (``load.py``) that measures it with Redis healthy and with Redis stopped.
See ``docs/example-service.md``."""
