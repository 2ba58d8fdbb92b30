"""Command-line edge: flag definitions and their conversion into frozen configs.

Imports every layer below it, to generate flags from their settings; the only importer of
absl.flags besides the grid (robustcl.reproduce) that sits above it.
"""
