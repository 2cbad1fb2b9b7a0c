"""The planning layer: matching, naming, layer kinds, model cards, layer decay, the decisions and
the immutable :class:`~tunespec.planning.plan.Plan`, and its reports.

It builds on :mod:`tunespec.recipe` and the protocol (:mod:`tunespec.backend_api`,
:mod:`tunespec.registry`); it never imports :mod:`tunespec.lifecycle`.
"""
