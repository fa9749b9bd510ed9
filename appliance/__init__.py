"""The composition root: settings, storage, queue, vault, runtime, worker and the CLI."""
