"""The ``cmav`` command line."""
