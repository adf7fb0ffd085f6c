"""Measurement harnesses behind the CLI (``hybridembed loadtest``)."""
