"""Read pickled annotation files that hold only plain data, without running any code.

Some dataset files are pickles (RefCOCO ``refs(unc).p``, written by Python 2 with protocol 2;
HSNet split ``.pkl`` files). ``pickle.load`` on such a file can run arbitrary code, so
:func:`load_plain_pickle` accepts only lists, dicts, tuples, sets, strings, bytes, numbers,
booleans and None, with two independent defences:

1. the byte stream is scanned with :func:`pickletools.genops` before anything is unpickled, and
   any opcode outside :data:`ALLOWED_OPCODES` (``GLOBAL``, ``STACK_GLOBAL``, ``REDUCE``,
   ``BUILD``, ``INST``, ``OBJ``, ``NEWOBJ``, ``EXT*``, ``PERSID``, out-of-band buffers, ...)
   rejects the file;
2. the unpickler itself refuses every global (``find_class``) and persistent id.

Python 2 ``str`` values are decoded as latin-1, so they arrive as ``str``.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

from sambench.errors import DatasetError

#: Opcodes that build plain containers and scalars, plus the stack/memo bookkeeping around them.
ALLOWED_OPCODES = frozenset({
    # framing, protocol, end
    "PROTO", "FRAME", "STOP",
    # scalars
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "FLOAT", "BINFLOAT",
    # strings and bytes
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
    "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    # containers
    "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS", "FROZENSET",
    # stack and memo
    "MARK", "POP", "POP_MARK", "DUP", "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT",
    "MEMOIZE",
})
PLAIN = "only plain lists/dicts/tuples/strings/numbers are accepted"
DEFAULT_HINT = (
    "re-download the file from its official source, or use a JSON export of it where the dataset supports one"
)
_STRING_OPCODES = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                             "SHORT_BINSTRING"})


class _Refused(pickle.UnpicklingError):
    """The unpickler met something beyond plain data."""


class _RefusingUnpickler(pickle.Unpickler):
    """An unpickler that cannot import anything or resolve persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"tries to load the global '{module}.{name}'")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"holds a persistent id ({pid!r})")


def _forbidden_opcode(data: bytes) -> str | None:
    """What the first disallowed opcode does (e.g. ``tries to load the global 'os.system'``),
    or None when the stream is plain data. ValueError for a corrupt or truncated stream."""
    recent: list[str] = []  # the last two string arguments: STACK_GLOBAL's module and name
    for opcode, arg, position in pickletools.genops(io.BytesIO(data)):
        if opcode.name in ALLOWED_OPCODES:
            if opcode.name in _STRING_OPCODES:
                text = arg.decode("latin1") if isinstance(arg, bytes) else str(arg)
                recent = (recent + [text])[-2:]
            continue
        if opcode.name in ("GLOBAL", "INST"):
            return f"tries to load the global '{str(arg).replace(' ', '.')}' ({opcode.name} at byte {position})"
        if opcode.name == "STACK_GLOBAL" and len(recent) == 2:
            return f"tries to load the global '{recent[0]}.{recent[1]}' (STACK_GLOBAL at byte {position})"
        return f"holds the opcode {opcode.name} at byte {position}, which can create objects or run code"
    return None


def load_plain_pickle(path: Path, *, hint: str = DEFAULT_HINT) -> Any:
    """Unpickle ``path`` if it holds only plain data; nothing in the file is ever executed.

    Args:
        path: the pickle file (any protocol 0..5; Python 2 pickles load with ``str`` values).
        hint: what the user can do instead, appended to the refusal message.

    Returns:
        The object: nested dicts/lists/tuples/sets of str, bytes, int, float, bool and None.

    Raises:
        DatasetError: the file is missing, corrupt or truncated, or holds anything beyond plain
            data (a global, a reduce/build call, an extension code, a persistent id, ...).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"pickle file not found: {path}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read pickle file {path} ({exc})") from None
    try:
        problem = _forbidden_opcode(data)
    except ValueError as exc:
        raise DatasetError(f"{path} is not a complete pickle (corrupt or truncated: {exc}); {hint}") from None
    if problem:
        raise DatasetError(f"{path.name} {problem}; {PLAIN}, so it was not loaded ({path}); {hint}")
    try:
        return _RefusingUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as exc:
        raise DatasetError(f"{path.name} {exc}; {PLAIN}, so it was not loaded ({path}); {hint}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError) as exc:
        raise DatasetError(f"{path} is not a valid pickle ({type(exc).__name__}: {exc}); {hint}") from None
