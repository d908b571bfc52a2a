"""Tests of webapp/answers/: its modules through their public surface, and end to end."""
