"""File utilities every layer shares (the bottom of the package: standard library only).

Files are replaced atomically (written beside, fsynced, renamed), so a crash leaves the old file or
the new one, never half of one. A fingerprint says which model files an evaluation attacked; a
settings key says which settings a result (an evaluation chunk, a reproduction row) was made with.
"""

import hashlib
import json
import os


def atomic_write_text(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_weights(model, path):
    # Keras wants the ".weights.h5" suffix, so the temporary file keeps it.
    tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(tmp, overwrite=True)
    os.replace(tmp, path)


def read_json(path, default=None):
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def fingerprint(*paths):
    """A hash of the files at `paths` (files, or every file under directories): what an evaluation
    records of the model it attacked, so results of another model are never mixed in."""
    digest = hashlib.sha1()
    for path in paths:
        files = (
            [path]
            if os.path.isfile(path)
            else sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        )
        for file_path in files:
            digest.update(os.path.relpath(file_path, path).encode())
            with open(file_path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def settings_key(settings):
    """A short hash of a settings dict (its canonical JSON): how evaluation chunks and the
    reproduction record's rows say what they were made with."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
