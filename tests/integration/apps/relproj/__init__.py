"""A project for the Redis reliability tests (broker and backend from the environment)."""
