"""The WSGI entry point: `gunicorn wsgi:app` (see gunicorn.conf.py).

Nothing network-related is imported before gunicorn's gevent worker has
monkey-patched the process: it imports this module after the fork.
"""

import gc

from webapp import create_app
from webapp.quiet import collect_when_quiet

app = create_app()
# What start-up loaded (Flask, SQLAlchemy, tiktoken's tables: ~190,000 objects)
# lives as long as the worker: out of the collector's way, a full collection
# takes ~30 ms instead of ~110 ms, and runs less often.
gc.collect()
gc.freeze()
# What it allocates from here on: full collections in the worker's quiet moments,
# not in the middle of a burst of requests (webapp/quiet.py).
collect_when_quiet()
# gunicorn imports this in each worker after the fork, with gevent running.
app.extensions["generation"].provider.warm_up()
