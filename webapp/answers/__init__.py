"""An answer's life beyond one request: where it is recorded (the store and its
recorder), how a reader anywhere follows it and a Stop anywhere reaches it (jobs in
this worker, the event log in Redis, the stored row), and its files and diffs."""

# The files' tables join the store's schema (Base.metadata) whoever imports the store,
# so a migration check and Alembic see them too.
from webapp.answers import files as files
