"""Running one shard: the pipeline that keeps the engine fed, the requests it sends, the result rows it
builds, the commits that make them durable, the order rows go in, and how a stop is honoured.
"""
