"""Reading a safetensors file no further than its header allows: the header's length is bounded, its
tensor table is checked against itself and the file, and the tensor bytes are read only after that
(``se_nas.products.modelfile.read_model`` reads model files through it). Each check that fails raises
a ``ValueError`` saying what does not add up; ``read_model`` turns it into a ``ModelFileError`` naming
the file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

MAX_HEADER_BYTES = 16 << 20  # a header (metadata and the tensor table) is tens of KB

# Bytes per element of the safetensors dtypes (the names in a file's header).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def read_declared(f, size: int) -> tuple[dict[str, str], int, bytes, int]:
    """Read a safetensors file from the open binary file ``f`` of ``size`` bytes, checking before each
    read that it is what the header declares: the header's length against ``MAX_HEADER_BYTES`` and the
    file, each tensor's dtype, shape and offsets against each other, and the tensors' total against
    what follows the header, which must be exactly that (a 2 GB file holding a 700 KB model is refused
    unread, not read whole). Returns (``__metadata__``, the number of values the tensors declare, the
    bytes read so far, the number of tensor bytes after them); raises ValueError saying what does not
    add up. The tensor bytes are read only once the header has been checked (``read_tensors``)."""
    if size < 8:
        raise ValueError(f"file is {size} bytes long, shorter than a safetensors header")
    first = f.read(8)
    n = int.from_bytes(first, "little")
    if n > size - 8:
        raise ValueError(f"header claims {n} bytes but only {size - 8} follow")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"header claims {n:,} bytes; at most {MAX_HEADER_BYTES:,} are allowed")
    raw = f.read(n)
    head = json.loads(raw.decode("utf-8"))
    if not isinstance(head, dict):
        raise ValueError(f"header must be a JSON object, got {type(head).__name__}")
    meta = head.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("its __metadata__ must map names to strings")
    end = values = 0
    for name, t in head.items():
        if name == "__metadata__":
            continue
        shape, offsets = (t.get("shape"), t.get("data_offsets")) if isinstance(t, dict) else (None, None)
        itemsize = DTYPE_BYTES.get(t.get("dtype")) if isinstance(t, dict) and isinstance(t.get("dtype"), str) else None
        ints = lambda xs: isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                       for x in xs)
        if itemsize is None or not ints(shape) or not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
            raise ValueError(f"tensor {name[:80]!r} is not described by a known dtype, a shape and two offsets")
        count = math.prod(shape)
        if offsets[1] - offsets[0] != count * itemsize:
            raise ValueError(f"tensor {name[:80]!r} declares {offsets[1] - offsets[0]:,} bytes for shape {shape[:8]}")
        end, values = max(end, offsets[1]), values + count
    if end != size - 8 - n:
        raise ValueError(f"its tensors declare {end:,} bytes but {size - 8 - n:,} follow the header")
    return meta, values, first + raw, end


def read_tensors(path: Path, head: bytes, end: int) -> bytes:
    """The whole file: its header bytes ``head`` (already read) and the ``end`` tensor bytes after it."""
    with open(path, "rb") as f:
        f.seek(len(head))
        body = f.read(end)
    if len(body) != end:
        raise ValueError(f"its tensors declare {end:,} bytes but only {len(body):,} follow the header")
    return head + body
