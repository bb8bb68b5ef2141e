"""Build the optional compiled quick path of the behaviour import: ``python3 -m registry.build``
(needs mypy and a C compiler; `make native` runs it after ``matching.build``).

Compiles the very same source, ``registry/behaviour_fast.py``, with mypyc into the extension module
``registry._fast_native`` (two ``.so`` files placed in ``registry/``, ignored by git). The preparing
process (`registry.behaviour_prepare`) uses it when present, unless ``TANHUI_BEHAVIOUR_PURE=1`` is set;
otherwise the pure-Python source. ``python3 -m registry.build --clean`` removes the built files.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def clean() -> None:
    for f in glob.glob(os.path.join(HERE, "_fast_native*.so")):
        os.remove(f)


def _copy_source(target: str) -> None:
    """The source, with the SHA-256 of the file as it is written into `SOURCE_SHA256`, so that a
    build of an older source is recognised and not used (`registry.behaviour_impl`)."""
    with open(os.path.join(HERE, "behaviour_fast.py"), "rb") as f:
        source = f.read()
    marker = b'\nSOURCE_SHA256 = ""\n'
    if source.count(marker) != 1:
        raise SystemExit("registry/behaviour_fast.py must set SOURCE_SHA256 = \"\" once")
    stamped = source.replace(marker, b'\nSOURCE_SHA256 = "' + hashlib.sha256(source).hexdigest().encode() + b'"\n')
    with open(target, "wb") as f:
        f.write(stamped)


def build() -> None:
    clean()
    with tempfile.TemporaryDirectory(prefix="tanhui-mypyc-") as tmp:
        pkg = os.path.join(tmp, "registry")
        os.mkdir(pkg)
        open(os.path.join(pkg, "__init__.py"), "w").close()
        _copy_source(os.path.join(pkg, "_fast_native.py"))
        env = dict(os.environ, MYPYC_OPT_LEVEL=os.environ.get("MYPYC_OPT_LEVEL", "3"))
        # Only this module is compiled: what it imports of `registry` is typed Any here and imported
        # from the real package at run time.
        subprocess.run(
            [sys.executable, "-m", "mypyc", "--ignore-missing-imports", os.path.join("registry", "_fast_native.py")],
            cwd=tmp,
            env=env,
            check=True,
        )
        built = glob.glob(os.path.join(pkg, "_fast_native*.so"))
        if not built:
            raise SystemExit("mypyc produced no extension")
        for f in built:
            shutil.copy(f, HERE)
            print("built", os.path.join(HERE, os.path.basename(f)))


def main(argv: list[str]) -> None:
    if "--clean" in argv:
        clean()
    else:
        build()


if __name__ == "__main__":
    main(sys.argv[1:])
