"""Name -> object registries with errors that list what is available."""

import difflib
import importlib
import os
import sys


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


class ModuleImportError(ValueError):
    """A user's module (named to register methods, backbones or Keras classes) failed to import."""


def import_modules(names, flag="extra_modules"):
    """Imports a user's modules, which register methods or backbones (robustcl.methods.register,
    robustcl.models.register) or Keras classes (keras.saving.register_keras_serializable), from the
    working directory or sys.path. A failure names the module, the flag and the reason."""
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # any failure: the user's module is named with the reason
            raise ModuleImportError(f"--{flag}: cannot import {name!r}: {type(error).__name__}: {error}") from None
