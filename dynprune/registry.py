"""The plugin host: loads plugins from the ``dynprune`` entry-point group, builds one registry per kind.

Environment controls (read when the host is first built):

- ``DYNPRUNE_DISABLE_PLUGIN_AUTOLOAD=1``: load only dynprune's own built-in entry points.
- ``DYNPRUNE_BLOCK_PLUGINS=a,b``: never load these entry-point names.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs

log = logging.getLogger(__name__)

__all__ = ["PluginHost", "get_host", "reset_host", "create_model", "list_models", "create", "list_names",
           "KINDS"]

KINDS = ("models", "degradations", "labelers", "losses", "datasets", "classifiers")
SINGULAR = {"models": "model", "degradations": "degradation", "labelers": "labeler", "losses": "loss",
            "datasets": "dataset", "classifiers": "classifier"}
_OWN_DIST = "dynprune"


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    description: str = ""
    paper: dict = field(default_factory=dict)


class PluginHost:
    """A pluggy manager plus the registries its plugins filled.

    dynprune's own entry points load first and cannot be displaced. A third-party entry point fails
    alone: one that cannot be imported, implements a hook dynprune does not have (a misspelling), raises
    while registering, registers a name another plugin holds, or is named like a built-in plugin is
    left out whole, logged once as a warning and listed in :attr:`failed` (``dynprune plugins`` shows it);
    every other plugin keeps working.

    Args:
        autoload: load entry points of other distributions (default: unless
            ``DYNPRUNE_DISABLE_PLUGIN_AUTOLOAD`` is set).
        plugins: extra plugin objects to register (tests, notebooks), as ``{name: plugin}``; these are
            strict: their errors raise.
    Attributes:
        failed: ``{entry-point name: "distribution: error"}`` of the third-party plugins left out.
    Raises:
        ValueError / TypeError: a plugin given in ``plugins`` (or a built-in one) registers a name held by
        another plugin (both named), an invalid name, a non-callable factory or bad paper figures.
    """

    def __init__(self, autoload: bool | None = None, plugins: dict[str, object] | None = None):
        if autoload is None:
            autoload = os.environ.get("DYNPRUNE_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
        blocked = {b.strip() for b in os.environ.get("DYNPRUNE_BLOCK_PLUGINS", "").split(",") if b.strip()}
        self.pm = pluggy.PluginManager("dynprune")
        self.pm.add_hookspecs(hookspecs)
        self.distributions: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.registries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        own_first = sorted(md.entry_points(group="dynprune"),
                           key=lambda ep: (ep.dist is None or ep.dist.name != _OWN_DIST, ep.name))
        for ep in own_first:
            dist = ep.dist.name if ep.dist is not None else "?"
            own = dist == _OWN_DIST
            if ep.name in blocked or (own and self.pm.get_plugin(ep.name) is not None):
                continue  # blocked, or dynprune's own entry point seen twice (two installs on the path)
            if not autoload and not own:
                continue
            label = f"{dist} {ep.dist.version}" if ep.dist is not None else dist
            try:
                if self.pm.get_plugin(ep.name) is not None:
                    held = self.distributions.get(ep.name, "?")
                    raise ValueError(f"its entry-point name {ep.name!r} is that of the plugin from {held}: "
                                     "rename the entry point")
                self._add(ep.name, ep.load(), label)
            except Exception as err:  # noqa: BLE001 - a third-party plugin must not break dynprune
                if own:
                    raise
                self._fail(f"{ep.name} ({label})", ep.name, err)
        for name, plugin in (plugins or {}).items():
            self._add(name, plugin, "(registered in code)")

    def _add(self, name: str, plugin: object, label: str) -> None:
        """Register one plugin and its names, or raise leaving no trace of it."""
        self.pm.register(plugin, name=name)
        self.distributions[name] = label
        try:
            unknown = sorted({c.name for c in self.pm.get_hookcallers(plugin) or () if c.spec is None})
            if unknown:
                known = sorted(n for n in dir(hookspecs) if n.startswith("dynprune_"))
                raise ValueError(f"it implements unknown hook(s) {unknown}; dynprune's hooks are {known}")
            staged = {kind: {} for kind in KINDS}
            for kind in KINDS:
                for impl in getattr(self.pm.hook, f"dynprune_register_{kind}").get_hookimpls():
                    if impl.plugin_name == name:
                        impl.function(register=self._registrar(kind, staged[kind], name))
        except BaseException:
            self.pm.unregister(plugin)
            del self.distributions[name]
            raise
        for kind, entries in staged.items():
            self.registries[kind].update(entries)

    def _fail(self, label: str, name: str, err: BaseException) -> None:
        msg = f"{type(err).__name__}: {err}"
        self.failed[name] = f"{label}: {msg}"
        log.warning("plugin %s failed to load and is left out: %s", label, msg)

    def _registrar(self, kind: str, reg: dict[str, Entry], plugin: str):
        dist = self.distributions.get(plugin, "?")

        def register(name: str, factory: Callable[..., Any], description: str = "",
                     paper: dict[str, str] | None = None) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"plugin {plugin!r} registered a {SINGULAR[kind]} with invalid name {name!r}")
            held = reg.get(name) or self.registries[kind].get(name)
            if held is not None:
                raise ValueError(f"duplicate {SINGULAR[kind]} name {name!r}: registered by plugin {held.plugin!r} "
                                 f"({held.distribution}) and by plugin {plugin!r} ({dist})")
            if not callable(factory):
                raise TypeError(f"plugin {plugin!r} registered {SINGULAR[kind]} {name!r} with a non-callable factory")
            if paper is not None and not (isinstance(paper, dict) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in paper.items())):
                raise TypeError(f"plugin {plugin!r} registered {SINGULAR[kind]} {name!r} with paper={paper!r}: "
                                "expected {condition label or 'paper': text}")
            reg[name] = Entry(name, factory, plugin, dist, description, dict(paper or {}))

        return register

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._reg(kind) if fnmatch.fnmatchcase(n, pattern))

    def entry(self, kind: str, name: str) -> Entry:
        reg = self._reg(kind)
        if name not in reg:
            failed = "".join(f"; plugin {f} failed to load" for f in self.failed.values())
            raise ValueError(f"unknown {SINGULAR[kind]} {name!r}; registered: {', '.join(sorted(reg)) or 'none'}"
                             + failed)
        return reg[name]

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        return self.entry(kind, name).factory(**kwargs)

    def _reg(self, kind: str) -> dict[str, Entry]:
        if kind not in self.registries:
            raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
        return self.registries[kind]


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, built (plugins loaded) on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST


def reset_host(host: PluginHost | None = None) -> None:
    """Replace the process-wide host (None: rebuild lazily on next use)."""
    global _HOST
    _HOST = host


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build registered object ``name`` of ``kind`` (one of :data:`KINDS`).

    Raises:
        ValueError: unknown kind or name (the registered names are listed).
    """
    return get_host().create(kind, name, **kwargs)


def list_names(kind: str, pattern: str = "*") -> list[str]:
    """Registered names of ``kind`` matching the fnmatch ``pattern``."""
    return get_host().names(kind, pattern)


def create_model(name: str, **kwargs: Any):
    """Build a registered restoration model, e.g. ``create_model("dncnn", weights="net.pth")``.

    Raises:
        ValueError: unknown name (the registered models are listed), or the factory's own errors.
    """
    return create("models", name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered restoration models matching ``pattern``."""
    return list_names("models", pattern)
