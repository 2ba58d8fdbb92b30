"""SavedModel export for TF Serving, a stand-in tensorflow_model_server (REST and gRPC), clients for
both APIs, and robustness tests through a server."""
