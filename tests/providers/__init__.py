"""Tests of webapp/providers/: its modules through their public surface, and end to end."""
