"""The version of agent-sandbox and of every provider distribution built from this repository."""

__version__ = "0.1.0"
