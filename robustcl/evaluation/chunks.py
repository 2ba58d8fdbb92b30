"""Finished chunks of an evaluation, persisted as they finish: STATE_DIR/chunks/ holds one file per
chunk of points (`chunk_<first point>.npz`: every attack's per-point verdicts and perturbation
statistics) and `settings.json`, what they were made with. A rerun skips finished chunks; a rerun
with other settings is refused, naming them. scripts/evaluate.py (shards, devices) and
robustcl.evaluate(state_dir=...) both keep their state here.
"""

import json
import os

import numpy as np

from robustcl.files import atomic_write_text, read_json, settings_key
from robustcl.settings import ConfigError


class ChunkStore:
    """OUTPUT_DIR/chunks/: finished chunks and the settings they were made with."""

    def __init__(self, output_dir, settings, flag="output_dir"):
        self.directory = os.path.join(output_dir, "chunks")
        self.flag = flag  # what the user named the directory by, for the messages
        self.settings = json.loads(json.dumps(settings))  # as stored: tuples become lists
        self.key = settings_key(settings)

    def check_settings(self):
        """Refuses a directory whose chunks were made with other settings, naming them."""
        path = os.path.join(self.directory, "settings.json")
        stored = read_json(path)
        if stored is None:
            os.makedirs(self.directory, exist_ok=True)
            atomic_write_text(path, json.dumps(self.settings, indent=2, sort_keys=True))
            return
        differ = sorted(k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k))
        if differ:
            details = "; ".join(f"{k}: {stored.get(k)!r} there, {self.settings.get(k)!r} now" for k in differ)
            raise ConfigError(
                f"--{self.flag}: {self.directory} holds results made with other settings "
                f"({details}); use another --{self.flag} or remove it"
            )

    def path(self, start):
        return os.path.join(self.directory, f"chunk_{start:08d}.npz")

    def has(self, start):
        return os.path.isfile(self.path(start))

    def write(self, chunk):
        meta = dict(chunk["meta"], settings_key=self.key)
        arrays = {k: v for k, v in chunk.items() if k != "meta"}
        final = self.path(meta["start"])
        tmp = final[: -len(".npz")] + ".tmp.npz"
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def read(self, start):
        with np.load(self.path(start), allow_pickle=False) as f:
            chunk = {k: f[k] for k in f.files if k != "meta"}
            chunk["meta"] = json.loads(str(f["meta"]))
        return chunk


def read_all(store, starts, num_shards):
    """Every chunk, or an error naming the shards with chunks missing or made otherwise."""
    missing, other = {}, {}
    chunks = []
    for k, start in enumerate(starts):
        shard = k % num_shards
        if not store.has(start):
            missing.setdefault(shard, []).append(start)
            continue
        chunk = store.read(start)
        if chunk["meta"].get("settings_key") != store.key:
            other.setdefault(shard, []).append(start)
            continue
        chunks.append(chunk)
    problems = [
        f"shard {shard} of {num_shards}: {len(v)} chunk(s) missing (first point "
        f"{v[0]}); run it with --shard_index={shard}"
        for shard, v in sorted(missing.items())
    ]
    problems += [
        f"shard {shard} of {num_shards}: {len(v)} chunk(s) made with other settings (first point {v[0]})"
        for shard, v in sorted(other.items())
    ]
    if problems:
        raise ConfigError(f"--num_shards: cannot merge {store.directory}: " + "; ".join(problems))
    return chunks
