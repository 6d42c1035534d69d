"""Deployment targets: each knows how to export a captured graph and how to run what it exported."""
