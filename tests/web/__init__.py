"""Tests of webapp/web/: its modules through their public surface, and end to end."""
