"""`make demo`: the main job end to end on a sample made from packaged public-domain photos.

Writes demo/out/: the sample shots, both facesets and their contact sheets.
"""

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import samples  # noqa: E402
from engine.extract import extract  # noqa: E402

OUT = ROOT / "demo" / "out"


def make_shots(out: Path) -> tuple[Path, Path]:
    """Source A: the astronaut as an image sequence. Target B: Grace Hopper as an mp4 shot."""
    frames_a, _ = samples.make_clip("astronaut", 48, (480, 360))
    frames_b, _ = samples.make_clip("grace_hopper", 48, (480, 360), scale=0.7)
    return samples.write_sequence(out / "shot_a", frames_a), samples.write_video(out / "shot_b.mp4", frames_b)


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    shot_a, shot_b = make_shots(OUT)
    for name, shot in (("a", shot_a), ("b", shot_b)):
        summary = extract(shot, OUT / f"faceset_{name}", detector="dlib", size=256)
        shutil.copy(OUT / f"faceset_{name}" / "contact_sheet.png", OUT / f"contact_sheet_{name}.png")
        print(f"faceset {name}: {summary['faces']} faces from {summary['frames']} frames")
    print(f"contact sheets: {OUT / 'contact_sheet_a.png'} {OUT / 'contact_sheet_b.png'}")


if __name__ == "__main__":
    main()
