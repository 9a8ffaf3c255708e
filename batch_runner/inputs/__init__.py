"""Inputs: reading the prompt set (JSONL, Parquet, datasets, OpenAI batch files), the pre-flight pass
that checks every row before an engine starts, rendering prompts, per-row sampling, and which rows are
this shard's.
"""
