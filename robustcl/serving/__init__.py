"""SavedModel export for TF Serving, a stand-in tensorflow_model_server (REST and gRPC), clients for
both APIs, and robustness tests through a server.

Imports evaluation (loading a run to export it), training's layout and below; its settings:
serving/settings.py. python -m robustcl.cli.model_server starts the server.
"""
