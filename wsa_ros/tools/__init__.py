"""Offline commands (``wsa <command>``): check-bundle, bench, eval-bag, screen, demo, plots."""
