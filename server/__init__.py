"""fal-onprem server: fal-compatible HTTP API, job store, batching worker and CLI."""
