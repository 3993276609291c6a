"""Helpers that build small synthetic artifacts (tests and benchmarks share them)."""
