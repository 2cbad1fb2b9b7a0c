"""The recipe layer: reading recipe files, validating values, the spec and the recipe's sections.

The bottom layer: it imports nothing else from tunespec but :mod:`tunespec.errors`, and asks no
backend anything (options and semantics are checked against the chosen backend when an optimizer
is made, in :mod:`tunespec.planning.optimizers`). Import its modules, e.g.
:mod:`tunespec.recipe.spec`, :mod:`tunespec.recipe.recipe`.
"""
