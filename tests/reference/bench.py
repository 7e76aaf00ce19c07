"""Reference statistics for runtime/src/bench.rs: numpy's median, 90th percentile (default
linear method) and mean of a few timing samples. Run once by hand:

    "$(scripts/pyenv.sh)" tests/reference/bench.py
"""

import json
import pathlib

import numpy as np

rng = np.random.default_rng(20261122)
cases = [
    [5.0],
    [3.0, 1.0],
    [4.2, 1.5, 9.9, 2.0, 2.0],
    list(np.round(rng.gamma(4.0, 10.0, size=20), 3)),
    list(np.round(rng.normal(88.3, 0.7, size=7), 3)),
    list(np.round(rng.uniform(0.05, 0.2, size=101), 4)),
]
out = {
    "numpy": np.__version__,
    "cases": [
        {
            "samples": [float(x) for x in c],
            "median": float(np.median(c)),
            "p90": float(np.percentile(c, 90)),
            "mean": float(np.mean(c)),
        }
        for c in cases
    ],
}
path = pathlib.Path(__file__).resolve().parents[1] / "data" / "bench" / "stats.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(path)
