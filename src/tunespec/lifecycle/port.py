"""Copy every parameter and norm statistic between two models, across frameworks.

Matched through canonical names, so torchvision ``resnet18`` and GluonCV ``resnet18_v1b`` port
directly. All-or-nothing: every name and shape is checked before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tunespec.dispatch import backend_for
from tunespec.errors import SpecError
from tunespec.framework_facts import is_ignored_state
from tunespec.lifecycle.loading import Deferred, match_state, write_all
from tunespec.planning.naming import NameMap, Rename


@dataclass
class PortReport:
    copied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the target, nothing maps onto them
    unexpected: list[str] = field(default_factory=list)  # in the source, not in the target
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # name, source, target shape
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"port: {len(self.copied)} copied, {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches, "
                 f"{len(self.ignored)} ignored"]
        lines += [f"  missing in source: {n}" for n in self.missing[:10]]
        lines += [f"  not in target: {n}" for n in self.unexpected[:10]]
        lines += [f"  shape {n}: source {s} vs target {t}" for n, s, t in self.mismatched[:10]]
        return "\n".join(lines)


def _tensors(listing: Any) -> tuple[dict[str, Any], list[str]]:
    """State only one framework has (its facts' ignored_state) is never ported, never missed."""
    kept = {t.canonical: t for t in listing.tensors if not is_ignored_state(t.canonical)}
    return kept, [t.canonical for t in listing.tensors if is_ignored_state(t.canonical)]


def port(src: Any, dst: Any, strict: bool = True, rename: Rename = None,
         src_backend: str | None = None, dst_backend: str | None = None) -> PortReport:
    """Copy ``src``'s parameters and statistics into ``dst`` (torch <-> Gluon, or same framework).

    A port is a load whose checkpoint is the source model: its canonical names are the keys, its
    tensors the values (read only once everything matched). ``rename`` maps source canonical names
    onto target ones when structures differ (see :class:`tunespec.planning.naming.NameMap`). ``strict``
    (default) refuses any missing, unexpected or shape-mismatched tensor; otherwise those are
    reported and skipped. Either way nothing is written unless every copied tensor checks out.
    """
    sb, db = backend_for(src, src_backend), backend_for(dst, dst_backend)
    source, ignored = _tensors(sb.listing(src))
    state = {name: Deferred(tuple(t.shape or ()), partial(sb.read, t.handle)) for name, t in source.items()}
    names = NameMap(rename=rename)
    loaded, writes, listing = match_state(db, dst, state, names, "port")
    ignored_dst = [t.canonical for t in listing.tensors if is_ignored_state(t.canonical)]
    report = PortReport(missing=sorted(loaded.missing), unexpected=loaded.unexpected,
                        mismatched=loaded.mismatched,
                        ignored=ignored + ignored_dst + loaded.skipped + loaded.ignored)
    names.check_used("port", strict)
    if strict and not report.ok:
        raise SpecError(f"{report}\nnothing was written; pass rename={{regex: replacement}} for "
                        f"models whose structures differ, or strict=False to copy what matches")
    report.copied = write_all(db, writes, "port", "nothing was written")
    return report
