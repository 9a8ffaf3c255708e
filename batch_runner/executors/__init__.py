"""Executors: where a job's shards run (this process, several engines on one node, Slurm array tasks,
a Ray cluster). Every executor runs the same shard runner and resumes from the same markers.
"""
