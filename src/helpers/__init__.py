"""Helpers behind the accelerator adaptation report: one module per concern.

Stage notebooks in notebooks/ stay thin and call into these modules; see DESIGN in README.
"""

__version__ = "0.1.0"
