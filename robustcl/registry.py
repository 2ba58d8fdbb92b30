"""Name -> object registries with errors that list what is available."""

import difflib


class Registry:
    """Maps names to classes or factories; `get` fails with the known names and a suggestion."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

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


def unknown_message(kind, name, names):
    """The one message for a name that is not known: what is known, and the closest name."""
    message = f"unknown {kind} {name!r}; known: {', '.join(names)}"
    close = difflib.get_close_matches(str(name), list(names), n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message
