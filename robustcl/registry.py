"""Name -> object registries with errors that list what is available."""

import difflib


class Registry:
    """Maps names to classes or factories; `get` fails with the known names and a suggestion. A
    registry of plain names (`Registry("norm", ("linf", "l2"))`) is how a closed set of choices is
    spelled; iterating gives the names in registration order."""

    def __init__(self, kind, names=()):
        self.kind = kind
        self._entries = {}
        for name in names:
            self.register(name)(name)

    def register(self, name):
        def decorator(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name):
        if name not in self._entries:
            raise KeyError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name):
        return unknown_message(self.kind, name, self.names())

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def check(self, name, error=ValueError):
        """`name`, or `error` with the one unknown-name message."""
        if name not in self._entries:
            raise error(self.unknown_message(name))
        return name


def unknown_message(kind, name, names):
    """The one message for a name that is not known: what is known, and the closest name."""
    message = f"unknown {kind} {name!r}; known: {', '.join(names)}"
    close = difflib.get_close_matches(str(name), list(names), n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message
