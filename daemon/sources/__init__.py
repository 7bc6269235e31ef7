"""Sources: where events come from. Each source decodes input and hands it to Intake.

The queue source types are registered in ``daemon.sources.registry``. This package
imports nothing itself, so that a decode worker process can import the half of a
source that runs there (``redis_read``) without loading every broker's client.
"""
