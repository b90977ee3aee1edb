"""The worker: consumes messages from the broker and executes tasks in a pool."""
