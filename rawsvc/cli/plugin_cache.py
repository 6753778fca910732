"""
C{rawsvc plugin-cache}: regenerate Twisted's C{dropin.cache} so C{twistd}
finds the rawsvc plugin quickly (pip does not build the cache).
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("plugin-cache", help="regenerate twistd's plugin cache after install")
    p.set_defaults(func=plugin_cache)


def plugin_cache(args) -> int:
    from twisted.plugin import IPlugin, getPlugins
    from twisted.application.service import IServiceMaker

    list(getPlugins(IPlugin))
    names = sorted(m.tapname for m in getPlugins(IServiceMaker))
    if "rawsvc" not in names:
        print("rawsvc's twistd plugin was not found: is rawsvc installed (not an editable install)?")
        return 1
    print("twistd plugins: " + ", ".join(names))
    return 0
