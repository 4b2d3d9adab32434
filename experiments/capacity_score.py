"""Issue 40: score fast4_wide's fold 2 against fast4's fold 2, per source, each run's own rule
(the `own` rows of `covseg calibrate`, last checkpoint, lung framing, the segment path).
Usage (after experiments/capacity.sh and the five-fold study of the shipped recipe,
`covseg calibrate runs/cv_e30 ... --out runs/study5_last --rule-from pretrained --framing lungs`):
    .venv/bin/python experiments/capacity_score.py 2   # writes runs/score40.json"""

import json
import os
import sys
import time
from pathlib import Path

from paired_folds import summarise  # experiments/ is the script's folder, first on sys.path

from covseg.studies.calibrate import run_study

data = ["prepared/medseg100", "prepared/zenodo10"]
folds = [int(a) for a in sys.argv[1:]] or [2]


result = {}
for k in folds:
    pair = Path(f"runs/pair40_fold{k}")
    pair.mkdir(exist_ok=True)
    filler = 4 if k != 4 else 1
    for name, target in (
        (f"fold{k}_rep0", f"../cv_e30_fast4_wide/fold{k}_rep0"),
        (f"fold{filler}_rep0", f"../cv_e30/fold{filler}_rep0"),
    ):
        if not (pair / name).exists():
            os.symlink(target, pair / name)
    if not (pair / "splits.json").exists():
        os.symlink("../cv_e30/splits.json", pair / "splits.json")
    t = time.time()
    wide = run_study(pair, data, f"runs/study40_fold{k}", which="last", framing="lungs")
    ref_path = "runs/study5_last/burden_oof.json"
    if not os.path.exists(ref_path):
        ref_path = "runs/study_124/burden_oof.json"
    ref = json.loads(Path(ref_path).read_text())
    result[f"fold{k}"] = {
        "fast4_wide": summarise(wide, [f"fold{k}_rep0"]),
        "fast4": summarise(ref, [f"fold{k}_rep0"]),
        "fast4_from": ref_path,
        "seconds": round(time.time() - t),
    }
print(json.dumps(result, indent=1))
Path("runs/score40.json").write_text(json.dumps(result, indent=1))
