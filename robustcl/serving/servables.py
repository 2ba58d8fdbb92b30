"""The models a model server serves, as TF Serving's ServerCore manages them.

A model is a base path whose numeric subdirectories are versions (SavedModels). Its version policy
says which versions to serve: `latest` N (TF Serving's default, N = 1), `all`, or `specific`
versions; labels name versions. The base paths are polled every `poll_wait_seconds` (TF Serving's
--file_system_poll_wait_seconds: 1 by default; 0 polls once at start, a negative value never
after that): a new version the policy wants is loaded, a version it no longer wants (or whose
directory is gone) is unloaded. Every version ever seen keeps its last state (START, LOADING,
AVAILABLE, UNLOADING, END) for GetModelStatus, newest first, as TF Serving's ServableStateMonitor.

Requests name a model and optionally a version or a label; errors carry the status code TF Serving
would return (ServingError), with its message where TF Serving's sources fix it:
tensorflow_serving/core/basic_manager.cc, model_servers/server_core.cc, get_model_status_impl.cc.
"""

import dataclasses
import os
import threading
import time
from typing import Dict, Optional, Tuple
import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"


class ServingError(Exception):
    """A request TF Serving would refuse: `code` is its absl status code name (INVALID_ARGUMENT,
    NOT_FOUND, FAILED_PRECONDITION, UNAVAILABLE, UNIMPLEMENTED, INTERNAL)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One entry of TF Serving's ModelServerConfig.model_config_list."""

    name: str
    base_path: str
    policy: str = "latest"  # latest, all or specific
    num_versions: int = 1  # latest N
    versions: Tuple[int, ...] = ()  # specific
    labels: Tuple[Tuple[str, int], ...] = ()


def parse_model_config_file(path):
    """The ModelConfigs of a ModelServerConfig text proto (TF Serving's --model_config_file)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        with open(path) as f:
            text_format.Parse(f.read(), config)
    except OSError as error:
        raise ValueError(f"--model_config_file: cannot read {path}: {error}") from None
    except text_format.ParseError as error:
        raise ValueError(f"--model_config_file: {path} is not a ModelServerConfig text proto: {error}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"--model_config_file: {path} has no model_config_list")
    models = []
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ValueError(
                f"--model_config_file: every config needs a name and a base_path; got "
                f"{text_format.MessageToString(entry, as_one_line=True)!r}"
            )
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(
                f"--model_config_file: model {entry.name}: platform "
                f"{entry.model_platform!r} is not served here (tensorflow only)"
            )
        policy = entry.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        num_versions = policy.latest.num_versions if kind == "latest" else 1
        models.append(
            ModelConfig(
                entry.name,
                entry.base_path,
                kind,
                num_versions or 1,
                tuple(policy.specific.versions) if kind == "specific" else (),
                tuple(sorted(entry.version_labels.items())),
            )
        )
    names = [m.name for m in models]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"--model_config_file: model names repeated: {', '.join(duplicated)}")
    return models


@dataclasses.dataclass
class Version:
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    model: Optional[object] = None  # the loaded SavedModel while AVAILABLE
    signature_defs: Optional[dict] = None  # name -> SignatureDef proto
    error: str = ""  # why loading failed (state END, status UNKNOWN)


def _signature_defs(path):
    """The SignatureDef protos of a SavedModel (what TF Serving's metadata and REST input maps read)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = next(g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags)
    return dict(graph.signature_def)


class ModelManager:
    def __init__(self, configs, poll_wait_seconds=1.0, log=print):
        self.configs = {c.name: c for c in configs}
        self.poll_wait_seconds = poll_wait_seconds
        self.log = log
        self._versions: Dict[str, Dict[int, Version]] = {c.name: {} for c in configs}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    # ---- loading ----------------------------------------------------------------------------

    def _wanted(self, config):
        """The versions the policy wants among those on disk."""
        try:
            on_disk = sorted(
                int(d)
                for d in os.listdir(config.base_path)
                if d.isdigit() and os.path.isfile(os.path.join(config.base_path, d, "saved_model.pb"))
            )
        except OSError:
            on_disk = []
        if config.policy == "all":
            return on_disk
        if config.policy == "specific":
            return [v for v in on_disk if v in config.versions]
        return on_disk[-config.num_versions :]

    def poll(self):
        """One pass over every base path: load what the policies want, unload what they do not."""
        for config in self.configs.values():
            wanted = set(self._wanted(config))
            with self._lock:
                current = self._versions[config.name]
                unload = [v for v, s in current.items() if s.state == "AVAILABLE" and v not in wanted]
                # A version that failed to load is not retried (its error stays in its status).
                load = sorted(
                    v for v in wanted if v not in current or (current[v].state == "END" and not current[v].error)
                )
                for v in load:
                    current[v] = Version("LOADING")
                for v in unload:
                    current[v].state = "UNLOADING"
            for version in load:
                path = os.path.join(config.base_path, str(version))
                try:
                    model, signature_defs = tf.saved_model.load(path), _signature_defs(path)
                except Exception as error:  # any failure to load leaves the version END with its error
                    with self._lock:
                        current[version] = Version("END", error=f"{type(error).__name__}: {error}")
                    self.log(f"model {config.name} version {version}: failed to load: {error}")
                    continue
                with self._lock:
                    current[version] = Version("AVAILABLE", model, signature_defs)
                self.log(f"model {config.name} version {version}: AVAILABLE")
            for version in unload:
                with self._lock:
                    current[version] = Version("END")
                self.log(f"model {config.name} version {version}: unloaded (END)")

    def start(self):
        self.poll()
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll_forever, daemon=True)
            self._thread.start()

    def _poll_forever(self):
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll()
            except Exception as error:  # a bad pass must not stop later ones
                self.log(f"polling failed: {error}")

    def stop(self):
        self._stop.set()

    def wait_until_available(self, timeout=None):
        """Blocks until every model has an AVAILABLE version (TF Serving opens its ports then)."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            with self._lock:
                ready = all(
                    any(v.state == "AVAILABLE" for v in versions.values()) for versions in self._versions.values()
                )
            if ready or (deadline is not None and time.time() > deadline):
                return ready
            time.sleep(0.1)

    # ---- requests -----------------------------------------------------------------------------

    def resolve(self, name, version=None, label=None):
        """(version, Version) of an AVAILABLE servable for a request; ServingError otherwise."""
        if version is not None and label is not None:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Both model version ({version}) and model version label ({label}) cannot be supplied.",
            )
        with self._lock:
            versions = self._versions.get(name)
            if label is not None:
                labels = dict(self.configs[name].labels) if versions is not None else {}
                if label not in labels:
                    raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
                version = labels[label]
            available = {v: s for v, s in (versions or {}).items() if s.state == "AVAILABLE"}
            if version is None:
                if not available:
                    raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
                version = max(available)
            elif version not in available:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
            return version, available[version]

    def status(self, name, version=None):
        """[(version, state, error)] newest first, as GetModelStatus reports them."""
        with self._lock:
            versions = self._versions.get(name, {})
            if version is not None:
                if version not in versions:
                    raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
                return [(version, versions[version].state, versions[version].error)]
            if not versions:
                raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
            return [(v, versions[v].state, versions[v].error) for v in sorted(versions, reverse=True)]

    def available(self):
        with self._lock:
            return {
                name: sorted(v for v, s in versions.items() if s.state == "AVAILABLE")
                for name, versions in self._versions.items()
            }
