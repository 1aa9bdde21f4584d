"""Opening HDF5 files without letting a damaged one crash the process.

libhdf5 trusts a file's metadata: changed bytes in a B-tree, a heap or an object header can make it read
out of bounds and kill the whole process (SIGSEGV), which no ``except`` catches. So nothing is opened with
h5py before it is known to be safe:

- **Sealed files**: the files emdenoise writes and later reads back (model files and checkpoints, the
  processed split files) are created with a 512-byte HDF5 user block (:func:`create_sealed`). Once the HDF5
  file is closed, the user block gets the header ``emdenoise-sha256:<64 hex digits>\\n`` (zero padded): the
  sha256 of every byte after the user block. :func:`open_sealed` checks it before h5py sees the file, so a
  damaged file is one InputError and libhdf5 never parses it. libhdf5 skips the user block, so these are
  ordinary HDF5 files for h5py, h5dump and HDFView.
- **Foreign files** (the raw em_graphene_sim images, HDF5 micrographs given to denoise) cannot be sealed.
  :func:`open_foreign` first has a child process open the file and walk all its metadata (every group and
  link, following hard links only, every attribute value, every dataset's type and shape, the chunk index
  of chunked datasets) without reading the bulk data. If the child dies (libhdf5 crashed), fails, or does
  not finish in PROBE_TIMEOUT_S (libhdf5 can also loop forever, e.g. on a damaged global heap), the file is
  refused with one line; otherwise it is opened here. Python exceptions in the child are not failures: h5py
  raises them cleanly, and the readers turn them into their own one-line errors when they meet them.

**Nothing outside the file.** An HDF5 file can make libhdf5 read other files: external links, datasets
whose raw data lie in other files (external storage), virtual datasets whose sources are other files, and
filters that only a plugin (a shared library loaded at read time) decodes. A data file must not pull other
files into the outputs, so each of these is refused (one line naming the file, the object and what it points
to): in the probe's child for foreign files, and after opening, on the handle that is read, for foreign and
sealed files alike (the seal proves integrity, not who wrote the file). Virtual datasets whose sources are
in the same file (``"."``) are fine. The walk follows hard links only, never an external link, and plugin
loading is switched off (in the child, and in every process that imports this module), so no other file
is opened while checking or reading.

Run as ``python -m emdenoise.io.h5safe FILE`` this module is that child.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py

from emdenoise.errors import InputError

USER_BLOCK = 512  # bytes before the HDF5 superblock; the smallest user block HDF5 allows
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HEADER = re.compile(rb"emdenoise-sha256:([0-9a-f]{64})\n\0*")
_HASH_BLOCK = 4 << 20  # bytes hashed at a time: split files can be many GB
PROBE_TIMEOUT_S = 120  # the walk of an intact file's metadata takes well under a second
_WALK = ("-m", "emdenoise.io.h5safe")  # what the probe's child runs, with the file's path after it
_REFUSED = 3  # the child's exit status for a file that reaches outside; JSON on stdout
# filters that libhdf5 and h5py have built in (an id here never makes libhdf5 look for a plugin)
_FILTERS = {
    h5py.h5z.FILTER_DEFLATE: "deflate (gzip)",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
    h5py.h5z.FILTER_SZIP: "szip",
    h5py.h5z.FILTER_NBIT: "nbit",
    h5py.h5z.FILTER_SCALEOFFSET: "scaleoffset",
    h5py.h5z.FILTER_LZF: "lzf",
}
_SELF_CONTAINED = "expected an HDF5 file that holds all its data itself (emdenoise reads no other file through it)"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding emdenoise/

# No filter plugin is ever loaded in a process that reads HDF5 through emdenoise: libhdf5's plugin search path
# (HDF5_PLUGIN_PATH or its default folder) is emptied, so a filter id a file names is never looked for on disk
# (libhdf5 would load every library on the path to find it).
while h5py.h5pl.size():
    h5py.h5pl.remove(0)


# ---------------------------------------------------------------------------------------------- sealed files


def _digest(path: Path) -> str:
    """sha256 (hex) of the bytes of ``path`` after the user block, read in blocks."""
    sha = hashlib.sha256()
    buffer = bytearray(_HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb") as fh:
        fh.seek(USER_BLOCK)
        while n := fh.readinto(buffer):
            sha.update(view[:n])
    return sha.hexdigest()


def seal(path: str | os.PathLike) -> None:
    """Write the header into the user block of ``path``: an HDF5 file created with ``userblock_size=512``
    and closed. Used by :func:`create_sealed`, and by tests that edit a sealed file with h5py."""
    path = Path(path)
    with open(path, "rb") as fh:
        fh.seek(USER_BLOCK)
        if fh.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            raise ValueError(
                f"{path}: not an HDF5 file with a {USER_BLOCK}-byte user block; create it with "
                f"h5safe.create_sealed or h5py.File(..., userblock_size={USER_BLOCK})"
            )
    header = b"emdenoise-sha256:" + _digest(path).encode("ascii") + b"\n"
    with open(path, "rb+") as fh:
        fh.write(header.ljust(USER_BLOCK, b"\0"))


@contextlib.contextmanager
def create_sealed(path: str | os.PathLike) -> Iterator[h5py.File]:
    """A new HDF5 file at ``path`` (normally a temporary path from ``fsutil.atomic_path``), open for writing;
    closed and sealed when the block ends without an exception (left unsealed otherwise)."""
    with h5py.File(path, "w", userblock_size=USER_BLOCK) as fh:
        yield fh
    seal(path)


def verify(path: str | os.PathLike, hint: str = "") -> None:
    """Raise a one-line InputError unless ``path`` is a sealed file whose header matches its contents.

    ``hint`` (e.g. "run the preprocess task again") is added to the message."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(USER_BLOCK + len(HDF5_SIGNATURE))
    found = _HEADER.fullmatch(head[:USER_BLOCK])
    if found:
        if _digest(path) == found.group(1).decode("ascii"):
            return
        problem = "damaged or not written by emdenoise: its sha256 does not match the one recorded in its header"
    elif head.startswith(HDF5_SIGNATURE) or head[USER_BLOCK:] == HDF5_SIGNATURE:
        seen = (
            "an HDF5 file without one (written by another program or an earlier emdenoise?)"
            if head.startswith(HDF5_SIGNATURE)
            else f"{head[:40]!r}"
        )
        problem = (
            f"damaged or not written by emdenoise: expected the header 'emdenoise-sha256:<64 hex digits>' "
            f"in its first {USER_BLOCK} bytes (the HDF5 user block), found {seen}"
        )
    else:
        problem = (
            "expected an HDF5 file written by emdenoise; this is not HDF5 (a pickle, a torch.save file, "
            "or a truncated file?)"
        )
    raise InputError.at(path, None, problem + (f"; {hint}" if hint else ""))


def open_sealed(path: str | os.PathLike, hint: str = "") -> h5py.File:
    """:func:`verify` ``path``, then open it read-only with h5py (whose OSError the caller handles); an
    InputError when it reaches outside itself (:func:`_open_checked`)."""
    verify(path, hint)
    return _open_checked(path, hint)


# ---------------------------------------------------------------------------------------------- foreign files


def probe(path: str | os.PathLike, child: tuple[str, ...] = _WALK) -> None:
    """Walk the metadata of ``path`` in a child process (``python <child> PATH``); a one-line InputError when
    the child is killed by a signal, fails, or takes longer than PROBE_TIMEOUT_S, or when it found an object
    that reaches outside the file (exit _REFUSED; the line names the object and its target)."""
    path = Path(path)
    env = dict(os.environ)  # the child imports this very package, wherever it was imported from here
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["HDF5_PLUGIN_PRELOAD"] = "::"  # libhdf5 in the child loads no filter plugin at all
    try:
        done = subprocess.run(
            [sys.executable, *child, str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise InputError.at(
            path,
            None,
            f"damaged HDF5 file: the HDF5 library did not finish reading its "
            f"structure within {PROBE_TIMEOUT_S} s; expected an intact HDF5 file",
        ) from None
    if done.returncode == _REFUSED:
        with contextlib.suppress(ValueError, TypeError):  # anything but [path, message]: a failure
            where, problem = json.loads(done.stdout)
            raise InputError.at(path, where, problem)
    if done.returncode < 0:
        how = f"crashed ({signal.Signals(-done.returncode).name})"
    elif done.returncode > 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        how = f"failed (exit {done.returncode}{': ' + lines[-1].strip() if lines else ''})"
    else:
        return
    raise InputError.at(
        path, None, f"damaged HDF5 file: the HDF5 library {how} reading its structure; expected an intact HDF5 file"
    )


def open_foreign(path: str | os.PathLike) -> h5py.File:
    """:func:`probe` ``path``, then open it read-only with h5py (whose OSError the caller handles); an
    InputError when it reaches outside itself (:func:`_open_checked`)."""
    probe(path)
    return _open_checked(path)


def _open_checked(path: str | os.PathLike, hint: str = "") -> h5py.File:
    """Open ``path`` read-only and check this very handle (not only the file the probe saw) for objects that
    reach outside the file: the first one is a one-line InputError."""
    fh = h5py.File(path, "r")
    try:
        outside = _walk(fh, deep=False)
        if outside:
            where, problem = _refusal(outside)
            raise InputError.at(path, where, problem + (f"; {hint}" if hint else ""))
    except BaseException:
        fh.close()
        raise
    return fh


def _refusal(outside: list[tuple[str, str]]) -> tuple[str, str]:
    """The object path and the message for the first (by path) of the objects :func:`_walk` found."""
    where, problem = min(outside)
    more = len(outside) - 1
    return where, problem + (f" ({more} more object{'s' if more > 1 else ''} in the file likewise)" if more else "")


def _reaches_out(dcpl: h5py.h5p.PropDCID) -> str | None:
    """What a dataset's creation properties make libhdf5 read besides this file (one phrase), or None."""
    if dcpl.get_external_count():
        target = os.fsdecode(dcpl.get_external(0)[0])
        return f"its data are stored in another file, {target!r} (HDF5 external storage); {_SELF_CONTAINED}"
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        for i in range(dcpl.get_virtual_count()):
            source = dcpl.get_virtual_filename(i)
            if source != ".":  # "." is this same file
                return (
                    f"a virtual dataset reading {source!r} (dataset {dcpl.get_virtual_dsetname(i)!r}); "
                    f"{_SELF_CONTAINED}"
                )
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in _FILTERS:
            return (
                f"compressed with HDF5 filter {code}, which needs a plugin; expected a filter built into HDF5 "
                f"or h5py: {', '.join(_FILTERS.values())}"
            )
    return None


def _walk(fh: h5py.File, deep: bool = True) -> list[tuple[str, str]]:
    """Visit, once each, every object that hard links lead to from the root; return the objects that reach
    outside the file, as (object path, what it reaches: :func:`_reaches_out`, or an external link).

    Soft links are not followed (an object they name in the file is reached through its hard links) and
    external links are never followed. ``deep`` (the probe's child) also reads every attribute and each
    dataset's type, shape and chunk index, of datasets that do not reach outside. What h5py raises is passed
    over: an exception is no crash, and the walk goes on."""
    seen, todo, outside = set(), [fh], []
    while todo:
        obj = todo.pop()
        with contextlib.suppress(Exception):
            if obj.id in seen:  # ObjectIDs compare equal for the same object: cycles end here
                continue
            seen.add(obj.id)
            if deep:
                with contextlib.suppress(Exception):
                    for name in obj.attrs:
                        with contextlib.suppress(Exception):
                            _ = obj.attrs[name]
            if isinstance(obj, h5py.Dataset):
                try:
                    reaches = _reaches_out(obj.id.get_create_plist())
                except Exception as exc:  # e.g. a source name that is not UTF-8: unknown counts as outside
                    reaches = f"cannot tell which files its data come from ({type(exc).__name__}); {_SELF_CONTAINED}"
                if reaches:
                    outside.append((obj.name, reaches))
                elif deep:
                    _ = obj.dtype, obj.shape, obj.compression, obj.fillvalue
                    if obj.chunks:
                        _walk_chunks(obj.id)
            elif isinstance(obj, h5py.Group):
                for name in obj:
                    with contextlib.suppress(Exception):
                        link = obj.get(name, getlink=True)
                        if isinstance(link, h5py.ExternalLink):
                            target = f"{link.filename!r} (object {link.path!r})"
                            outside.append(
                                (posixpath.join(obj.name, name), f"an external link to {target}; {_SELF_CONTAINED}")
                            )
                        elif isinstance(link, h5py.HardLink):
                            child = obj.get(name)
                            if child is not None:
                                todo.append(child)
    return outside


def _walk_chunks(dsid: h5py.h5d.DatasetID) -> None:
    """Every entry of a chunked dataset's chunk index (where each chunk is), not the chunks themselves."""
    if hasattr(dsid, "chunk_iter"):  # one pass over the index (HDF5 >= 1.12.3)
        dsid.chunk_iter(lambda info: None)
    else:
        for i in range(dsid.get_num_chunks()):
            dsid.get_chunk_info(i)


def _main(argv: list[str]) -> int:
    """The probe's child: walk the file named by ``argv[0]``; exit 0 unless the process dies first, or
    _REFUSED with ``[object path, message]`` (JSON) on stdout when the file reaches outside itself."""
    signal.alarm(PROBE_TIMEOUT_S + 10)  # ends a hung walk even when the parent was killed and cannot
    try:
        fh = h5py.File(argv[0], "r")
    except Exception:
        return 0  # not openable: the reader's own error says why, no crash to fear
    with fh:
        outside = _walk(fh)
    if outside:
        print(json.dumps(_refusal(outside)))
        return _REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
