"""Download the FAN detector's weight files into a folder, each checked against the SHA-256 prefix in its
name before it is renamed into place: run by Download Detector Weights as its own process (so Blender's
window stays live), with Blender's Python, `python fetch_weights.py FOLDER`. No bpy here."""

import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

# face-alignment's own weight files; the 10 hex digits in each name begin the file's SHA-256.
URLS = (
    "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
    "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
)
CHUNK = 1 << 20


def expected_prefix(name: str) -> str:
    return name.split(".")[0].rsplit("-", 1)[1]


def fetch(url: str, folder: Path) -> Path:
    """One file: downloaded to a temp file beside its target, hash-checked, then renamed into place."""
    name = url.rsplit("/", 1)[1]
    target = folder / name
    if target.is_file():
        return target
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                print(json.dumps({"event": "progress", "phase": name, "done": done, "total": total}), flush=True)
        if not digest.hexdigest().startswith(expected_prefix(name)):
            raise ValueError(f"{name}: the download's SHA-256 {digest.hexdigest()[:10]} is not the published "
                             f"{expected_prefix(name)}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def main() -> int:
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    try:
        files = [str(fetch(url, folder)) for url in URLS]
    except (OSError, ValueError) as e:
        print(json.dumps({"event": "error", "message": f"download failed: {e}"}), flush=True)
        return 2
    print(json.dumps({"event": "done", "files": files, "folder": str(folder)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
