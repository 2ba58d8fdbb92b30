"""Command-line edge: flag definitions and their conversion into frozen configs."""
