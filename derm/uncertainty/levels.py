"""The coverage levels offered (a light module: the command line's parser reads it without numpy's friends)."""

LEVELS = (0.8, 0.9, 0.95)
DEFAULT_LEVEL = 0.9
