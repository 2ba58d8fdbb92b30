"""SavedModel export for TF Serving, a TF-Serving-compatible REST test server, and a client."""
