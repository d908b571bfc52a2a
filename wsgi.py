"""The WSGI entry point: `gunicorn wsgi:app` (see gunicorn.conf.py).

Nothing network-related is imported before gunicorn's gevent worker has
monkey-patched the process: it imports this module after the fork.
"""

from webapp import create_app

app = create_app()
# gunicorn imports this in each worker after the fork, with gevent running.
app.extensions["generation"].provider.warm_up()
