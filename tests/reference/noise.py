"""Reference values for the seeded noise (runtime/src/noise.rs), computed from the definition in
README.md ("Noise.") alone, without reading the Rust code:

  - one SplitMix64 stream per use (stream 0: initial latents, stream k+1: Euler ancestral's noise
    at step k), its state starting at mix(seed) ^ mix(stream + 0x9E3779B97F4A7C15), where mix is
    SplitMix64's output function; each draw adds 0x9E3779B97F4A7C15 to the state, then mixes it
    (Steele, Lea & Flood 2014, the published SplitMix64);
  - Box-Muller in float64 on pairs of 53-bit uniforms: u1 = ((a >> 11) + 1) / 2**53,
    u2 = (b >> 11) / 2**53, r = sqrt(-2 ln u1), values r cos(2 pi u2) then r sin(2 pi u2), each
    rounded to float32; an odd count drops the last sine.

The integer part uses Python's unbounded ints masked to 64 bits; the float part CPython's math
module (the platform libm) and numpy's float64 -> float32 rounding (to nearest, ties to even).

Run once by hand from the repository root:
    "$(scripts/pyenv.sh)" tests/reference/noise.py

Writes into tests/data/noise/:
  cases.json   per case: seed, stream, count and the float32 values as their IEEE-754 bit
               patterns (uint32), plus the versions that produced them
  long.npy     float32 (65536,): seed 7, stream 0, the initial noise of a 1024x1024 SDXL image
               (4 x 128 x 128), with its seed and stream recorded in cases.json
"""

import json
import math
import pathlib
import platform
import sys

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "noise"
MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(z):
    """SplitMix64's output function."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def normal(seed, stream, count):
    state = mix(seed) ^ mix((stream + GAMMA) & MASK)

    def draw():
        nonlocal state
        state = (state + GAMMA) & MASK
        return mix(state)

    values = []
    while len(values) < count:
        a, b = draw(), draw()
        u1 = ((a >> 11) + 1) / 2.0**53
        u2 = (b >> 11) / 2.0**53
        r = math.sqrt(-2.0 * math.log(u1))
        values.append(r * math.cos(2.0 * math.pi * u2))
        values.append(r * math.sin(2.0 * math.pi * u2))
    return np.array(values[:count], dtype=np.float64).astype(np.float32)


# (seed, stream, count): several seeds (0, small, large, the largest u64) and streams (the initial
# latents, the first ancestral steps, a late one), odd and even counts; each stream at two counts
# so that a short draw is checked to be a prefix of a long one.
CASES = [
    (0, 0, 4),
    (0, 0, 9),
    (1, 0, 1),
    (1, 0, 2),
    (42, 4, 3),
    (42, 4, 10),
    (7, 1, 5),
    (7, 2, 6),
    (123456789, 50, 33),
    (2**63, 0, 8),
    (2**64 - 1, 0, 7),
    (2**64 - 1, 1000, 12),
]
LONG = (7, 0, 4 * 128 * 128)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed, stream, count in CASES:
        values = normal(seed, stream, count)
        cases.append(
            {
                "seed": seed,
                "stream": stream,
                "count": count,
                "bits": [int(b) for b in values.view(np.uint32)],
                "values": [float(v) for v in values],
            }
        )
    seed, stream, count = LONG
    long_values = normal(seed, stream, count)
    np.save(OUT / "long.npy", long_values)
    out = {
        "generated_by": "tests/reference/noise.py",
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "libc": " ".join(platform.libc_ver()),
            "machine": platform.machine(),
        },
        "cases": cases,
        "long": {"seed": seed, "stream": stream, "count": count, "file": "long.npy"},
    }
    (OUT / "cases.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(cases)} cases and {count} long-stream values -> {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
