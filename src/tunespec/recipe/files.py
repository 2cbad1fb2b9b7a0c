"""Reading and writing files safely: atomic writes, bounded reads, a checked safetensors codec.

Every file tunespec writes goes through :func:`atomic_write`: a unique temporary file in the
target's directory, fsync, ``os.replace``, fsync of the directory. A crash at any point leaves the
previous file as it was; concurrent writers (threads or processes) never share a temporary name,
and temporary files left behind by killed writers are removed by the next save of that target.

Run checkpoints are safetensors files written and read by the small codec here, so no reader ever
unpickles, and every tensor's name, dtype, shape and bytes, plus the JSON metadata, are covered by
a sha256 digest stored in the header: a truncated, bit-flipped or foreign file is refused whole.
The codec works on bytes only, so the core never imports a framework (nor numpy).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any, Callable, Mapping
import tempfile

from tunespec.errors import SpecError
from tunespec.recipe.validate import excerpt

# safetensors dtype codes and their item sizes.
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# A run checkpoint is read whole (its digest covers every byte); beyond this it is refused unread.
MAX_FILE_BYTES = 64 * 2**30
# A safetensors header is JSON describing the tensors; real ones are kilobytes to a few megabytes.
MAX_HEADER_BYTES = 100 * 2**20
MAX_DIMS = 64
DIGEST_KEY = "tunespec.sha256"
_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it)
os.umask(_UMASK)


# --- reading ----------------------------------------------------------------------------------

def regular_file(path: str | Path, where: str, max_bytes: int | None = MAX_FILE_BYTES) -> int:
    """The size of ``path`` after checking it is a regular file (not a directory, a FIFO or
    ``/dev/zero``, which would block or never end) no larger than ``max_bytes``."""
    if not isinstance(path, (str, os.PathLike)):  # an int would be taken for a file descriptor
        raise SpecError(f"{where}: expected a file path, got {type(path).__name__} {excerpt(path)}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SpecError(f"{where}: {str(path)!r} does not exist") from None
    except ValueError as exc:  # an embedded NUL byte
        raise SpecError(f"{where}: {excerpt(str(path))} is not a valid path ({exc})") from None
    except OSError as exc:
        raise SpecError(f"{where}: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise SpecError(f"{where}: {str(path)!r} is {_kind(st.st_mode)}; pass a checkpoint file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise SpecError(f"{where}: {str(path)!r} is {st.st_size} bytes, more than the {max_bytes} a "
                        f"checkpoint may have")
    return st.st_size


def read_bytes(path: str | Path, where: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The whole file, after :func:`regular_file`; never reads more than ``max_bytes``."""
    size = regular_file(path, where, max_bytes)
    try:
        with open(path, "rb") as f:
            data = f.read(size + 1)  # one byte more shows a file that grew meanwhile
    except OSError as exc:
        raise SpecError(f"{where}: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    if len(data) != size:
        raise SpecError(f"{where}: {str(path)!r} changed size while it was read; read it again")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # built in C; a duplicate shows as a shorter dict
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {excerpt(k)}")
            seen.add(k)
    return out


def strict_json(text: str | bytes) -> Any:
    """JSON with duplicate keys refused (a header with two entries for one tensor is foreign)."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


Entry = tuple[str, tuple[int, ...], Any]  # dtype code, shape, bytes-like data


def _entry(name: Any, info: Any, buffer_len: int) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {excerpt(name)}: entry is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise ValueError(f"tensor {excerpt(name)}: unknown dtype {excerpt(dtype)}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < 2**48 for d in shape)):
        raise ValueError(f"tensor {excerpt(name)}: shape {excerpt(shape)} is not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= buffer_len):
        raise ValueError(f"tensor {excerpt(name)}: data_offsets {excerpt(offsets)} outside the file")
    count = 1
    for d in shape:
        count *= d
    if offsets[1] - offsets[0] != count * DTYPE_SIZES[dtype]:
        raise ValueError(f"tensor {excerpt(name)}: {offsets[1] - offsets[0]} bytes for shape {shape} "
                         f"of {dtype}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _parse_header(raw: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensor entries, ``__metadata__``) of a safetensors header; ValueError for anything odd."""
    try:
        header = strict_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"header is not JSON ({excerpt(str(exc))})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("__metadata__ is not a mapping of strings")
    return header, dict(meta)


def _check_spans(header: Mapping[str, Any], body_len: int) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """Every entry checked against the data's length, the data covered exactly once, in file order."""
    spans = []
    for name, info in header.items():
        dtype, shape, begin, end = _entry(name, info, body_len)
        spans.append((begin, end, name, dtype, shape))
    spans.sort(key=lambda s: (s[0], s[1]))
    position = 0
    for begin, end, name, _, _ in spans:
        if begin != position:
            raise ValueError(f"tensor {excerpt(name)} starts at byte {begin}, not {position}: the data "
                             f"has gaps or overlaps")
        position = end
    if position != body_len:
        raise ValueError(f"{body_len - position} bytes after the last tensor")
    return [(name, dtype, shape, begin, end) for begin, end, name, dtype, shape in spans]


def decode_safetensors(data: bytes) -> tuple[dict[str, Entry], dict[str, str]]:
    """Tensors ({name: (dtype, shape, memoryview)}) and ``__metadata__`` of a safetensors file's
    bytes. Raises ``ValueError`` saying what is wrong; every byte must belong to the layout."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes: too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise ValueError(f"header length {n} does not fit the file's {len(data)} bytes")
    header, meta = _parse_header(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    return {name: (dtype, shape, body[begin:end])
            for name, dtype, shape, begin, end in _check_spans(header, len(body))}, meta


def encode_safetensors(tensors: Mapping[str, Entry], meta: Mapping[str, str]) -> list[Any]:
    """The chunks of a safetensors file (header, then each tensor's bytes), readable by the
    safetensors library as well."""
    header: dict[str, Any] = {"__metadata__": dict(meta)} if meta else {}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        size = memoryview(data).nbytes
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the library aligns the data to 8 bytes
    return [struct.pack("<Q", len(text)), text, *(memoryview(d).cast("B") for _, _, d in tensors.values())]


class Work:
    """What the checked codec did, counted (not timed): tests catch a return of super-linear
    growth by comparing the counts for n and 4n tensors."""

    entries = 0  # tensor entries encoded or decoded
    hashed = 0  # bytes fed to the digest

    @classmethod
    def reset(cls) -> None:
        cls.entries = cls.hashed = 0


def _header_digest(header: Mapping[str, Any]) -> Any:
    """A sha256 started on the header (tensor entries and metadata, the digest left out) in one
    normal form; the data bytes follow in file order, so reading hashes as it goes."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    Work.hashed += len(text)
    return hashlib.sha256(text)


_CHUNK = 8 << 20  # bytes hashed per step (hashlib releases the GIL for each)


def _hash_into(h: Any, data: memoryview) -> None:
    for start in range(0, data.nbytes, _CHUNK):
        h.update(data[start:start + _CHUNK])
    Work.hashed += data.nbytes


def write_checked(path: str, tensors: Mapping[str, Entry], meta: Mapping[str, str]) -> None:
    """A safetensors file whose metadata carries ``DIGEST_KEY``: sha256 over the header (without
    the digest) and then every data byte in file order, computed in the same pass that writes
    them; the digest's place in the header is filled in last (it has a fixed length)."""
    meta = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    header: dict[str, Any] = {"__metadata__": meta}
    views = []
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        view = memoryview(data).cast("B")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + view.nbytes]}
        offset += view.nbytes
        views.append(view)
    Work.entries += len(views)
    h = _header_digest(header)
    placeholder = "0" * 64
    meta[DIGEST_KEY] = placeholder
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the library aligns the data to 8 bytes
    at = 8 + text.index(f'"{DIGEST_KEY}":"{placeholder}"'.encode()) + len(DIGEST_KEY) + 4
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for view in views:
            _hash_into(h, view)
            f.write(view)
        f.seek(at)
        f.write(h.hexdigest().encode())


def read_checked(path: str | Path, where: str) -> tuple[dict[str, Entry], dict[str, str]]:
    """Tensors and metadata of a file :func:`write_checked` wrote, or a SpecError saying what is
    wrong with it (not safetensors, no digest: another tool's file, digest mismatch: damaged).

    The header is checked against the file's size before the data is read (a crafted entry
    cannot make this allocate more than the file holds); the data is then read once, into one
    buffer, hashed as it arrives. The tensors are views into that buffer."""
    size = regular_file(path, where)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{len(head)} bytes: too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ValueError(f"header length {n} does not fit the file's {size} bytes")
            header, meta = _parse_header(f.read(n))
            body_len = size - 8 - n
            spans = _check_spans(header, body_len)
            saved = meta.pop(DIGEST_KEY, None)
            if saved is None:
                raise _NoDigest
            h = _header_digest({"__metadata__": meta, **header})
            body = bytearray(body_len)
            view = memoryview(body)
            got = 0
            while got < body_len:
                step = f.readinto(view[got:got + _CHUNK])
                if not step:
                    break
                _hash_into(h, view[got:got + step])
                got += step
            if got != body_len or f.read(1):
                raise SpecError(f"{where}: {str(path)!r} changed size while it was read; read it again")
    except _NoDigest:
        raise SpecError(f"{where}: {str(path)!r} is not a tunespec run checkpoint (a safetensors file "
                        f"without tunespec's digest; load weights from it with tunespec.load)") from None
    except ValueError as exc:
        raise SpecError(f"{where}: {str(path)!r} is not a tunespec run checkpoint (not a valid "
                        f"safetensors file: {exc})") from None
    except OSError as exc:
        raise SpecError(f"{where}: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    if h.hexdigest() != saved:
        raise SpecError(f"{where}: {str(path)!r} is damaged: its digest does not match its contents "
                        f"(truncated or altered since it was saved); use an earlier checkpoint")
    Work.entries += len(spans)
    return {name: (dtype, shape, view[begin:end]) for name, dtype, shape, begin, end in spans}, meta


class _NoDigest(Exception):
    pass


def has_digest(path: str | Path) -> bool:
    """Whether ``path`` looks like a safetensors file tunespec wrote (its header names a digest).

    Only the header is read: ``tunespec.load`` then checks the digest before trusting any value,
    and reads other tools' safetensors files (which have none) as they are.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                return False
            header = f.read(n)
    except OSError:
        return False
    return DIGEST_KEY.encode() in header


# --- writing ----------------------------------------------------------------------------------

def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _remove_stale(target: Path) -> None:
    """Delete temporary files of ``target`` whose writer process is gone (killed mid-save)."""
    prefix = _temp_prefix(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            os.unlink(target.parent / name)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    """What a path that is not a regular file is, for messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe), "), (stat.S_ISCHR, "a character device, "),
             (stat.S_ISBLK, "a block device, "), (stat.S_ISSOCK, "a socket, "))
    return next((text for test, text in kinds if test(mode)), "") + "not a regular file"


def _resolved(path: Any, where: str, what: str) -> tuple[Path, int | None]:
    """(the path with links followed, its mode or None when nothing is there yet)."""
    if not isinstance(path, (str, os.PathLike)) or "\0" in os.fspath(path):
        raise SpecError(f"{where}: expected a {what} path, got {excerpt(path)}")
    target = Path(os.path.realpath(path))
    try:
        return target, os.stat(target).st_mode
    except FileNotFoundError:
        return target, None
    except OSError as exc:  # a link loop, a component that is not a directory, no permission
        raise SpecError(f"{where}: cannot write {str(path)!r} ({_reason(exc)})") from None


def writable_file(path: str | Path, where: str) -> Path:
    """The resolved path (links followed) that writing ``path`` replaces, after checking it is a
    regular file or does not exist yet.

    Writing replaces the directory entry, so a FIFO or a device node given as the output (or a
    link to one) would stop being one for every other process: refused, naming it.
    """
    target, mode = _resolved(path, where, "file")
    if mode is not None and not stat.S_ISREG(mode):
        shown = repr(str(path)) if str(target) == os.path.abspath(path) else \
            f"{str(path)!r} (a link to {str(target)!r})"
        hint = "pass a file path" if stat.S_ISDIR(mode) else "tunespec writes only regular files; pass " \
            "a new path or a regular file to replace"
        raise SpecError(f"{where}: {shown} is {_kind(mode)}; {hint}")
    return target


def writable_directory(path: str | Path, where: str, marker: str) -> Path:
    """The resolved path a directory checkpoint may be written to: a new path, or a directory
    holding ``marker`` (an earlier checkpoint of the same kind, which the save replaces).

    A save replaces the whole directory, so any other directory (a user's output folder), a
    regular file, a FIFO or a device is refused, naming it.
    """
    target, mode = _resolved(path, where, "directory")
    if mode is None:
        return target
    if not stat.S_ISDIR(mode):
        raise SpecError(f"{where}: {str(path)!r} is {_kind(mode)}; a sharded checkpoint is a directory: "
                        f"pass a new path or an earlier sharded checkpoint to replace")
    if not (target / marker).is_file():
        raise SpecError(f"{where}: {str(path)!r} is a directory that is not a sharded checkpoint (no "
                        f"{marker}); saving would replace everything in it: pass a new path")
    return target


def atomic_write(path: str | Path, write: Callable[[str], Any], where: str) -> Path:
    """Write ``path`` through ``write(temporary_path)`` so that it changes all at once or not at all.

    A symlink is written through (its target is replaced, the link stays); the target must be a
    regular file or a new path (:func:`writable_file`), never a FIFO or a device. An OSError (disk full,
    read-only directory) is a SpecError naming the path; the previous file is left as it was.
    Other exceptions (KeyboardInterrupt too) propagate after the temporary file is removed.
    """
    if not isinstance(path, (str, os.PathLike)) or "\0" in os.fspath(path):
        raise SpecError(f"{where}: expected a file path, got {excerpt(path)}")
    link = Path(path)
    target = writable_file(link, where)
    _remove_stale(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{_temp_prefix(target)}{os.getpid()}-",
                                   suffix=".tmp")
    except OSError as exc:
        raise SpecError(f"{where}: cannot write {str(link)!r} ({_reason(exc)}); the previous file is "
                        f"unchanged") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _keep_mode(target, tmp)
        writable_file(link, where)  # again: the path may have become a FIFO while we wrote
        os.replace(tmp, target)
    except OSError as exc:
        raise SpecError(f"{where}: cannot write {str(link)!r} ({_reason(exc)}); the previous file is "
                        f"unchanged") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            pass
    _fsync_dir(target.parent)
    return link


def _keep_mode(target: Path, tmp: str) -> None:
    """mkstemp creates 0600 files; give the new file the old one's mode, or the umask default."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = 0o666 & ~_UMASK
    os.chmod(tmp, mode)


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied or read-only file system"
    return exc.strerror or type(exc).__name__


# --- nested state as JSON plus named tensors ------------------------------------------------------

def encode_tree(value: Any, is_tensor: Callable[[Any], bool], add: Callable[[Any], str]) -> Any:
    """Nested optimizer state as JSON: tensors become ``{"T": name}`` (``add`` stores them and
    returns the name), tuples ``{"tuple": [...]}``, dicts ``{"d": [[key, value], ...]}`` (keys may be
    integers), non-finite floats ``{"f": "inf"}``. Anything else cannot be stored without pickle."""
    if is_tensor(value):
        return {"T": add(value)}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else {"f": repr(value)}
    if isinstance(value, tuple):
        return {"tuple": [encode_tree(v, is_tensor, add) for v in value]}
    if isinstance(value, list):
        return [encode_tree(v, is_tensor, add) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
            raise SpecError(f"save_checkpoint: optimizer state has keys {excerpt(list(value)[:4])}; "
                            f"only strings and integers can be stored without pickle")
        return {"d": [[k, encode_tree(v, is_tensor, add)] for k, v in value.items()]}
    raise SpecError(f"save_checkpoint: cannot store a {type(value).__name__} of the optimizer state "
                    f"without pickle ({excerpt(value)})")


def decode_tree(value: Any, tensor: Callable[[str], Any]) -> Any:
    """The inverse of :func:`encode_tree`; ``tensor(name)`` gives the stored tensor. Raises
    ``ValueError`` for anything :func:`encode_tree` cannot have written."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode_tree(v, tensor) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (kind, inner), = value.items()
        if kind == "T" and isinstance(inner, str):
            return tensor(inner)
        if kind == "tuple" and isinstance(inner, list):
            return tuple(decode_tree(v, tensor) for v in inner)
        if kind == "f" and inner in ("inf", "-inf", "nan"):
            return float(inner)
        if kind == "d" and isinstance(inner, list) and all(
                isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], (str, int))
                and not isinstance(kv[0], bool) for kv in inner):
            return {k: decode_tree(v, tensor) for k, v in inner}
    raise ValueError(f"unexpected optimizer-state entry {excerpt(value)}")
