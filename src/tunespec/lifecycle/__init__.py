"""The lifecycle layer: applying a plan and building its optimizer, stages and their learning
rates, checkpoints, loading/porting/initialising weights, cached prefixes, sharding and
parameter-server processes.

The top layer of the core: it builds on :mod:`tunespec.planning`, :mod:`tunespec.recipe` and the
protocol; nothing in those imports it.
"""
