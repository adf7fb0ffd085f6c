"""Usage: PYTHONPATH=. python scripts/index-memory-corpus.py FOLDER [SCALE]

A ~100 MB corpus for `hybridembed index` memory: one 2.1 MB single-line file, five
8 MB files of lines, and 2,075 files of 28 KB (100.3 MB in all); words from tests.models.WORDS."""
import random
import sys
from pathlib import Path

from tests.models import WORDS

root = Path(sys.argv[1])
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
rng = random.Random(0)
text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
root.mkdir(parents=True, exist_ok=True)
(root / "one-line.txt").write_text(text(420_000)[:2_100_000])
for i in range(int(5 * scale)):
    (root / f"big-{i}.md").write_text("\n".join(text(80) for _ in range(20_000))[:8_000_000])
(root / "many").mkdir(exist_ok=True)
for i in range(int(2075 * scale)):
    (root / "many" / f"f{i:04d}.txt").write_text(text(5_600)[:28_000])
