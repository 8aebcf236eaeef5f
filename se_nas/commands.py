"""Subcommands beyond ``cost`` and ``presets``: each registers its parser with ``se_nas.cli``."""
