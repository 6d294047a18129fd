"""Modal provider for agent-sandbox: :class:`ModalBackend` on the official ``modal`` SDK.

Install with ``pip install "agent-sandbox[modal]"``; select with ``provider="modal"``.
The SDK is imported lazily, on first use.
"""

from ._errors import rows as translate_rows
from .backend import ModalBackend, ModalOptions

__all__ = ["ModalBackend", "ModalOptions", "translate_rows"]
