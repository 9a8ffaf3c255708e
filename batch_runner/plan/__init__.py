"""Planning: short trial runs of the real job, the tuning grid over engine settings, and the estimate of
a whole job's time and cost.
"""
