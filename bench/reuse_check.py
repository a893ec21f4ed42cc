"""What checking reused cache entries against their recorded digests costs a cache stage's run.

A cache stage that runs again (its fingerprint changed: a new image, a new model) asks `has()` of every
entry, then hashes its whole store for the manifest. Before digests, `has()` read each entry's header
and the manifest hashed each file; now `has()` hashes each recorded entry and the manifest reuses
those hashes (remembered per size and mtime). This prints both, in a fresh process each (no hash
remembered from a previous run, as under `kontext run`):

    .venv/bin/python bench/reuse_check.py [ENTRIES] [KIB_PER_ENTRY]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

RUN = r"""
import sys, time
from pathlib import Path
from kontext_core.cache.store import TensorStore
from kontext_core.fsutil import sha256_tree
root, mode = Path(sys.argv[1]), sys.argv[2]
keys = [p.stem for p in sorted(root.rglob("*.safetensors"))]
digests = {}
if mode == "digests":
    import json
    digests = json.loads((root.parent / "digests.json").read_text())
start = time.perf_counter()
store = TensorStore(root, digests)
assert all(store.has(k) for k in keys)
checked = time.perf_counter() - start
sha256_tree(root)  # the manifest's hash of the store
print(f"{mode}: has() {checked:.3f} s, then the manifest's hash {time.perf_counter() - start - checked:.3f} s, "
      f"total {time.perf_counter() - start:.3f} s")
"""


def main() -> None:
    entries = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    kib = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    import json

    import torch

    from kontext_core.cache.store import TensorStore
    from kontext_core.fsutil import sha256_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "latents"
        store = TensorStore(root)
        store.put_many(
            [(TensorStore.key(i=i), {"latents": torch.randn(kib * 256)}) for i in range(entries)]
        )
        digests = {p.stem: sha256_file(p) for p in root.rglob("*.safetensors")}
        (Path(tmp) / "digests.json").write_text(json.dumps(digests))
        print(f"{entries} entries of {kib} KiB")
        for mode in ("structure", "digests", "structure", "digests"):
            out = subprocess.run([sys.executable, "-c", RUN, str(root), mode], capture_output=True, text=True)
            print(out.stdout.strip() or out.stderr[-2000:])


if __name__ == "__main__":
    main()
