"""Engines: the narrow interface the runner drives (submit requests, take completions), vLLM behind it,
the model files it loads, the GPUs it sees, and the engine processes it must not leave behind.

Only this package imports vLLM, and only inside functions, so the CLI and the pure-logic tests start fast.
"""
