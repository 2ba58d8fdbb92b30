"""The settings of export (scripts/export.py), the robustness tests of a served model
(scripts/serve_test.py) and the model server (python -m robustcl.cli.model_server)."""

import dataclasses
import os
from typing import Optional

from robustcl.settings import ConfigError, check, check_fields, option
from robustcl.training.settings import CHECKPOINTS


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """scripts/export.py: a training run's checkpoint as a SavedModel for TF Serving."""

    model_dir: str = option("", "Training run directory.")
    export_dir: str = option("", "Base directory; the model goes to EXPORT_DIR/<model_name>/<version>/.")
    model_name: Optional[str] = option(None, "Name under EXPORT_DIR (default: the run directory's name).")
    version: Optional[int] = option(None, "Version directory (default: one above the highest).", minimum=1)
    checkpoint: str = option("best", "Which checkpoint of the run.", choices=CHECKPOINTS)

    def validate(self):
        check(
            bool(self.model_dir) and os.path.isdir(self.model_dir),
            "model_dir",
            f"{self.model_dir!r} is not a directory",
        )
        check(bool(self.export_dir), "export_dir", "is required")
        check_fields(self)
        check(
            self.model_name is None or (bool(self.model_name) and "/" not in self.model_name),
            "model_name",
            f"{self.model_name!r} is not a directory name",
        )
        return self


@dataclasses.dataclass(frozen=True)
class ServeTestConfig:
    """scripts/serve_test.py: robustness tests of a served model (REST or gRPC) or an export."""

    server: str = option("", "TF Serving REST address, e.g. http://127.0.0.1:8501.")
    grpc: str = option("", "Or TF Serving's gRPC address, HOST:PORT (e.g. 127.0.0.1:8500): images go as TensorProtos.")
    model: str = option("", "Model name on the server.")
    model_version: Optional[int] = option(None, "Version on the server (default: its latest).", minimum=1)
    saved_model: str = option(
        "",
        "The export, in process: the target when no --server is given, else the white-box model for transfer attacks.",
    )
    data_dir: Optional[str] = option(None, "Official archive/folder or tfds directory.", exists=True)
    dataset: str = option("", "The test data, any --dataset of training (default: the export's config).")
    num_examples: int = option(200, "First N test images.", minimum=1)
    eps: float = option(8 / 255, "L-inf budget.", minimum=0, maximum=1)
    pgd_steps: int = option(20, "Steps of the white-box transfer attack.", minimum=1)
    square_queries: int = option(1000, "Square query budget per image.", minimum=1)
    chunk: int = option(32, "Images per unit of resumable work.", minimum=1)
    output_dir: str = option("", "Where results.jsonl and the reports go.")
    timeout: float = option(30.0, "Seconds before a request times out.", above=0)
    max_retries: int = option(4, "Retries of a failed idempotent request.", minimum=0)
    max_batch: int = option(64, "Images per request at most.", minimum=1)
    seed: int = option(0, "Seed of the attacks.")

    def validate(self):
        if self.server and self.grpc:
            raise ConfigError("--server and --grpc: give one (REST or gRPC)")
        if not (self.server or self.grpc or self.saved_model):
            raise ConfigError("--server, --grpc or --saved_model: give at least one")
        check(
            not (self.server or self.grpc) or bool(self.model),
            "model",
            f"required with --{'server' if self.server else 'grpc'}",
        )
        check(
            not self.grpc or (not self.grpc.startswith(("http://", "https://")) and ":" in self.grpc),
            "grpc",
            f"expected HOST:PORT, got {self.grpc!r}",
        )
        check(
            not self.server or self.server.startswith(("http://", "https://")),
            "server",
            f"expected http://HOST:PORT, got {self.server!r}",
        )
        check(
            not self.saved_model or os.path.isfile(os.path.join(self.saved_model, "saved_model.pb")),
            "saved_model",
            f"no saved_model.pb in {self.saved_model}",
        )
        check(bool(self.output_dir), "output_dir", "is required")
        check_fields(self)
        return self


@dataclasses.dataclass(frozen=True)
class ModelServerConfig:
    """python -m robustcl.cli.model_server: tensorflow_model_server's flags (model_servers/main.cc)
    that the stand-in implements, with their defaults, and its own failure injection for tests."""

    port: int = option(8500, "Port for gRPC (0: no gRPC).", minimum=0, maximum=65535)
    rest_api_port: int = option(0, "Port for the HTTP/REST API (0: no REST).", minimum=0, maximum=65535)
    model_name: str = option("default", "Name of the model (with --model_base_path).")
    model_base_path: str = option("", "Path holding the model's numeric version directories.")
    model_config_file: str = option(
        "",
        "A ModelServerConfig text proto: the models, their base paths, "
        "version policies and labels (instead of --model_name/"
        "--model_base_path).",
    )
    file_system_poll_wait_seconds: int = option(
        1, "Seconds between polls of the base paths for new (and removed) versions; 0 polls once, < 0 never."
    )
    host: str = option("0.0.0.0", "Address to listen on (tensorflow_model_server listens on every interface).")
    delay_s: float = option(0.0, "Stand-in only, for failure tests: sleep before every predict.", minimum=0)
    fail_first: int = option(
        0,
        "Stand-in only, for failure tests: answer the first N predicts as unavailable (REST 503, gRPC UNAVAILABLE).",
        minimum=0,
    )
    die_after: int = option(0, "Stand-in only, for failure tests: exit abruptly at predict N+1.", minimum=0)

    def validate(self):
        if self.model_config_file and self.model_base_path:
            raise ConfigError(
                "--model_config_file and --model_base_path: give one (the config file names every model's base path)"
            )
        if not (self.model_config_file or self.model_base_path):
            raise ConfigError("--model_base_path (with --model_name) or --model_config_file: give one")
        check_fields(self)
        if not (self.port or self.rest_api_port):
            raise ConfigError("--port and --rest_api_port are both 0: nothing would be served")
        if self.port and self.port == self.rest_api_port:
            raise ConfigError(f"--port and --rest_api_port: both {self.port}; gRPC and REST need two ports")
        return self
