"""Build the optional compiled engine: ``python3 -m matching.build`` (needs mypy and a C compiler).

Compiles the very same source, ``matching/engine.py``, with mypyc into the extension module
``matching._native`` (two ``.so`` files placed in ``matching/``, ignored by git). The pure-Python
engine stays the default whenever the extension is absent or ``TANHUI_MATCHING_PURE=1`` is set.
``python3 -m matching.build --clean`` removes the built files.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def clean() -> None:
    for f in glob.glob(os.path.join(HERE, "_native*.so")):
        os.remove(f)


def build() -> None:
    clean()
    with tempfile.TemporaryDirectory(prefix="tanhui-mypyc-") as tmp:
        pkg = os.path.join(tmp, "matching")
        os.mkdir(pkg)
        open(os.path.join(pkg, "__init__.py"), "w").close()
        shutil.copy(os.path.join(HERE, "engine.py"), os.path.join(pkg, "_native.py"))
        env = dict(os.environ, MYPYC_OPT_LEVEL=os.environ.get("MYPYC_OPT_LEVEL", "3"))
        subprocess.run(
            [sys.executable, "-m", "mypyc", "--strict", os.path.join("matching", "_native.py")],
            cwd=tmp,
            env=env,
            check=True,
        )
        built = glob.glob(os.path.join(pkg, "_native*.so"))
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
