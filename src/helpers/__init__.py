"""Helpers behind the accelerator adaptation report: one module per concern.

Stage notebooks in notebooks/ stay thin and call into these modules; the README's Layout
section lists them.
"""

__version__ = "0.1.0"
