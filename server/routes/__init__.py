"""One router per concern: queue, run, files, ops (and storage, proxy)."""
