"""End to end: the commands in subprocesses, as a user runs them (marked slow)."""
