"""Thin command-line entry points: parse arguments, wire library calls (``parse_args -> main``)."""
