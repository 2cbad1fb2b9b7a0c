"""The errors and warnings tunespec raises.

Every error is raised before the model is touched, so catching one leaves the
model exactly as it was.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A spec, a rule or its use on a model is wrong; the message names the fix.

    Example::

        try:
            tunespec.plan(model, {"freeze": [r"layer5\\..*"]})
        except tunespec.SpecError as error:
            print(error)   # ... matches no parameter ...; closest names: 'layer4', ...
    """


class StalePlanError(SpecError):
    """The model's parameters changed after planning (e.g. GluonCV ``reset_class``).

    Example::

        plan = tunespec.plan(net, spec)
        net.reset_class(["cat", "dog"])   # new head tensors
        plan.apply()                      # StalePlanError: re-plan with tunespec.plan(net, spec)
    """


class MissingFrameworkError(ImportError):
    """The framework a backend needs is not installed.

    Example::

        try:
            tunespec.plan(gluon_net, spec)
        except tunespec.MissingFrameworkError as error:
            print(error)   # names the extra to install: pip install 'tunespec[mxnet]'
    """


class TuneSpecWarning(UserWarning):
    """Something in the spec probably does not do what was meant (non-strict mode).

    Example::

        with warnings.catch_warnings():
            warnings.simplefilter("error", tunespec.TuneSpecWarning)   # make them errors in CI
            tunespec.plan(model, {"strict": False, "freeze": [r"layer5\\..*"]})
    """


def refuse_renamed(call: str, given: dict[str, object], renamed: dict[str, str]) -> None:
    """Refuse keywords a call no longer takes: one renamed in 0.2.0 is a SpecError naming its new
    name (never silently ignored), any other the TypeError Python raises for an unknown keyword.

    ```python
    from tunespec.errors import SpecError, refuse_renamed
    try:
        refuse_renamed("resume", {"schedule": None}, {"schedule": "runner"})
    except SpecError as exc:
        assert "runner=" in str(exc)
    ```
    """
    for key in given:
        if key in renamed:
            raise SpecError(f"{call}: {key}= is now {renamed[key]}= (renamed in tunespec 0.2.0; see "
                            f"CHANGELOG.md)")
        raise TypeError(f"{call}() got an unexpected keyword argument {key!r}")
