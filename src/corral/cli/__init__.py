"""The ``corral`` command line. The only place that prints or turns errors into exit codes."""
