"""CLI command groups, one module each (see meditune.cli.COMMAND_MODULES)."""
