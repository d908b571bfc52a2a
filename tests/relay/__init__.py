"""Tests of webapp/relay/: its modules through their public surface, and end to end."""
