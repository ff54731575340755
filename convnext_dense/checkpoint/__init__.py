"""Checkpoint files: reading them safely (:mod:`.pickle_scan`)."""
