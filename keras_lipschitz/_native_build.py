"""Compiles the library's C++ sources with the machine's compiler, once.

Shared by the fused TensorFlow CPU kernels (`_tf_cpu_kernels`) and the
ℓ∞-distance kernels (`_linf_kernels`): the compiler is `$CXX` if set (and
only it), else the first of g++, c++, clang++; libraries are cached under
`$KERAS_LIPSCHITZ_CACHE` (default `~/.cache/keras_lipschitz`), named by a
hash of everything that went into them, and written under a temporary name
then renamed, so concurrent processes never load a half-written file.

No backend is imported here.
"""

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile

_LOGGER = logging.getLogger("keras_lipschitz")


def compiler():
    """`$CXX` if set (and only it), else the first of g++, c++, clang++."""
    requested = os.environ.get("CXX")
    if requested:
        return shutil.which(requested)
    for candidate in ("g++", "c++", "clang++"):
        if shutil.which(candidate):
            return shutil.which(candidate)
    return None


def cache_dir():
    """The cache directory, created if needed (a temporary one as fallback)."""
    root = os.environ.get("KERAS_LIPSCHITZ_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache"
        )
        root = os.path.join(xdg, "keras_lipschitz")
    try:
        os.makedirs(root, exist_ok=True)
        return root
    except OSError:
        fallback = os.path.join(
            tempfile.gettempdir(), f"keras_lipschitz-{os.getuid()}"
        )
        os.makedirs(fallback, exist_ok=True)
        return fallback


def build(
    source_path,
    name,
    compile_flags,
    link_flags=(),
    key_parts=(),
    rebuild=False,
    description="native kernels",
):
    """Compiles `source_path` into a shared library, or finds it cached.

    The command is `compile_flags + [source, "-o", library] + link_flags`
    (`compile_flags` starts with the compiler). The library is
    `<cache>/<name>-<key>.so`, `key` hashing the source, `key_parts` (bytes)
    and the flags.

    Returns:
        The path of the library.

    Raises:
        RuntimeError: the compiler failed (the message ends with its
            output).
    """
    with open(source_path, "rb") as f:
        source = f.read()
    key = hashlib.sha256(
        b"\0".join(
            [source]
            + list(key_parts)
            + [flag.encode() for flag in list(compile_flags) + list(link_flags)]
        )
    ).hexdigest()[:16]
    directory = cache_dir()
    library = os.path.join(directory, f"{name}-{key}.so")
    if os.path.exists(library) and not rebuild:
        return library
    _LOGGER.info("keras_lipschitz: compiling %s (once)", description)
    handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(handle)
    try:
        result = subprocess.run(
            list(compile_flags)
            + [source_path, "-o", partial]
            + list(link_flags),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(result.stderr[-2000:])
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return library
