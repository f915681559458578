"""Developer tools (not part of the installed package): run from a checkout, e.g. ``make browser-check``."""
