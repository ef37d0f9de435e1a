"""URL scheme -> adaptor plugin: a built-in table of lazy imports, then entry points.

Built-in adaptors are imported only when a URL first names their scheme, so a missing
optional dependency (asyncssh, aioboto3) matters only to those who use it, and the
error says how to install it. Third-party adaptors register through the entry point
group ``aiores.adaptors``; tests use :func:`register_adaptor`. Two plugins with one
name, or one scheme claimed twice, is an error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ._exceptions import BadParameter, IncorrectURL, NotSupported
from ._url import URL
from .adaptor import AdaptorPlugin

__all__ = ["register_adaptor", "unregister_adaptor"]

ENTRY_POINT_GROUP = "aiores.adaptors"


@dataclass(frozen=True, slots=True)
class _BuiltIn:
    module: str
    extra: str | None  # the pip extra that brings its dependencies


# Order matters for any://: the first plugin that accepts a URL wins.
_BUILT_IN: dict[str, _BuiltIn] = {
    "local": _BuiltIn("aiores_local", None),
    "ssh": _BuiltIn("aiores_ssh", None),
    "sim": _BuiltIn("aiores_sim", None),
    "hosts": _BuiltIn("aiores._hosts", None),  # existing machines, for Fleet.add
    "ec2": _BuiltIn("aiores_ec2", "ec2"),
    "s3": _BuiltIn("aiores_s3", "ec2"),
}


class Registry:
    """Plugins by name and scheme (one per process: :data:`registry`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plugins: dict[str, AdaptorPlugin] = {}  # by name
        self._schemes: dict[str, str] = {}  # scheme -> plugin name
        self._entry_points_loaded = False

    # -- registration -------------------------------------------------------------
    def register(self, plugin: AdaptorPlugin | type[AdaptorPlugin]) -> AdaptorPlugin:
        instance = plugin() if isinstance(plugin, type) else plugin
        if not isinstance(instance, AdaptorPlugin):
            raise BadParameter(f"{plugin!r} is not an aiores.adaptor.AdaptorPlugin")
        if not instance.name or not instance.schemes:
            raise BadParameter(f"adaptor plugin {instance!r} must set a name and schemes")
        with self._lock:
            if instance.name in self._plugins:
                raise BadParameter(f"an adaptor named {instance.name!r} is already registered")
            clash = {s: self._schemes[s] for s in instance.schemes if s in self._schemes}
            if clash:
                raise BadParameter(
                    f"adaptor {instance.name!r} claims schemes already registered: "
                    + ", ".join(f"{s}:// by {n!r}" for s, n in sorted(clash.items()))
                )
            self._plugins[instance.name] = instance
            for scheme in instance.schemes:
                self._schemes[scheme] = instance.name
        return instance

    def unregister(self, name: str) -> None:
        with self._lock:
            plugin = self._plugins.pop(name, None)
            if plugin is None:
                raise BadParameter(f"no adaptor named {name!r} is registered")
            for scheme in plugin.schemes:
                self._schemes.pop(scheme, None)

    # -- lookup ---------------------------------------------------------------------
    def known_schemes(self) -> list[str]:
        self._load_entry_points()
        return sorted(set(_BUILT_IN) | set(self._schemes))

    def plugin_for(self, url: URL) -> AdaptorPlugin:
        """The plugin for ``url``'s scheme (``any://`` is resolved by :meth:`candidates`).

        Raises:
            IncorrectURL: no plugin handles the scheme; a compound scheme its adaptor
                does not declare (``local+ssh://``); no host where the plugin needs one.
            NotSupported: the built-in adaptor of the scheme cannot load.
        """
        plugin = self._by_scheme(url.scheme) or self._by_scheme(url.adaptor)
        if plugin is None:
            raise IncorrectURL(
                f"no adaptor for {url.scheme}:// (in {str(url)!r}); known schemes: "
                + ", ".join(f"{s}://" for s in self.known_schemes())
                + ", any://"
            )
        if url.scheme not in plugin.schemes:
            raise IncorrectURL(
                f"{url.scheme}:// means nothing: {url.adaptor}:// does not run over "
                f"{url.transport}; the {plugin.name!r} adaptor handles "
                + ", ".join(f"{s}://" for s in sorted(plugin.schemes))
            )
        check_host(plugin, url)
        return plugin

    def _by_scheme(self, name: str) -> AdaptorPlugin | None:
        if name in self._schemes:
            return self._plugins[self._schemes[name]]
        if name in _BUILT_IN:
            return self._load_built_in(name)
        self._load_entry_points()
        if name in self._schemes:
            return self._plugins[self._schemes[name]]
        return None

    def candidates(self, url: URL) -> Iterator[AdaptorPlugin]:
        """Plugins that accept ``url``, in order: built-ins, then the others."""
        self._load_entry_points()
        seen: set[str] = set()
        for scheme in _BUILT_IN:
            try:
                plugin = self._load_built_in(scheme)
            except NotSupported:
                continue  # its optional dependency is missing: not a candidate
            seen.add(plugin.name)
            if plugin.accepts(url):
                yield plugin
        for name, plugin in list(self._plugins.items()):
            if name not in seen and plugin.accepts(url):
                yield plugin

    def _load_built_in(self, scheme: str) -> AdaptorPlugin:
        spec = _BUILT_IN[scheme]
        with self._lock:
            if scheme in self._schemes:
                return self._plugins[self._schemes[scheme]]
        try:
            module = importlib.import_module(spec.module)
            plugin: AdaptorPlugin = module.plugin
        except Exception as exc:  # ImportError, or a broken install
            hint = f" Install it with: pip install 'aiores[{spec.extra}]'" if spec.extra else ""
            raise NotSupported(f"the {scheme}:// adaptor cannot load: {exc!r}.{hint}") from exc
        with self._lock:
            if scheme in self._schemes:  # another thread won the race
                return self._plugins[self._schemes[scheme]]
        return self.register(plugin)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._plugins or ep.name in _BUILT_IN:
                raise BadParameter(
                    f"entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r} reuses the "
                    f"adaptor name {ep.name!r}; rename it"
                )
            self.register(ep.load())


def check_host(plugin: AdaptorPlugin, url: URL) -> None:
    """Raise IncorrectURL if ``plugin`` needs a host and ``url`` names none."""
    if plugin.needs_host and not url.host:
        raise IncorrectURL(
            f"{str(url)!r} names no host: expected {url.scheme}://[user@]host[:port]"
        )


registry = Registry()


def register_adaptor(plugin: AdaptorPlugin | type[AdaptorPlugin]) -> AdaptorPlugin:
    """Register an adaptor plugin for this process (for tests and embedding).

    Raises:
        BadParameter: its name or one of its schemes is already registered.
    """
    return registry.register(plugin)


def unregister_adaptor(name: str) -> None:
    """Remove a plugin registered with :func:`register_adaptor`."""
    registry.unregister(name)
