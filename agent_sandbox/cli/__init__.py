"""The ``agent-sandbox`` command: create, run, copy, list and destroy sandboxes from a shell.

- :mod:`.main`: the entry point; turns every error into one line on stderr and an exit status.
- :mod:`.parser`: the argument parser of the built-in sub-commands.
- :mod:`.external`: sub-commands that bring their own parser (``mcp``, ``audit``, ...), one line
  each in a table.
- :mod:`.commands` and :mod:`.copy`: what each built-in sub-command does.
- :mod:`.lookup`: which provider holds a sandbox id; listing across providers.
- :mod:`.output` and :mod:`.progress`: what a person or a script sees.
"""

from .main import main

__all__ = ["main"]
