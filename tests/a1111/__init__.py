"""Tests of the A1111 webui API compatibility (scheduler/a1111)."""
