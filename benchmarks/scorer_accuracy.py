"""How far the ShapesWorld exact scorer can be trusted: clean and degraded renders scored against
their own prompts, random wrong prompts (false acceptance), and malformed drawings (a plus sign, an
ellipse, a ring, off-palette colours, ...: `malformed_32` / `malformed_64`, the fraction the scorer
reads as a valid object; targets: clean >= 0.999, malformed <= 0.01).

Prints a table, then one JSON object on the last line. Run: .venv/bin/python benchmarks/scorer_accuracy.py
(about 5 minutes on 2 CPU cores with the defaults).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from illume_eval.shapes.degrade import DEGRADATIONS
from illume_eval.shapes.selfcheck import (
    assessor_agreement,
    false_acceptance,
    malformed_acceptance,
    scorer_accuracy,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="clean validation scenes")
    parser.add_argument(
        "--n-degraded", type=int, default=500, help="scenes per degradation and size"
    )
    parser.add_argument("--n-assess", type=int, default=1000)
    parser.add_argument(
        "--n-malformed", type=int, default=300, help="malformed probes per kind and size"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    figures: dict = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {platform.python_version()}".strip()
    }
    figures["clean_32"] = scorer_accuracy(args.n, size=32, seed=0)
    for size in (32, 64):
        for kind in (*DEGRADATIONS, "all"):
            figures[f"{kind}_{size}"] = scorer_accuracy(
                args.n_degraded, size=size, seed=1, degradation=kind
            )
    figures["false_acceptance_32"] = false_acceptance(args.n, size=32, seed=2)
    for size in (32, 64):
        figures[f"malformed_{size}"] = malformed_acceptance(args.n_malformed, size=size, seed=4)
    figures["assessor"] = assessor_agreement(args.n_assess, size=32, seed=3)
    figures["seconds"] = round(time.perf_counter() - start, 1)

    print(f"{'condition':<16}{'overall':>9}{'scene':>8}  per tag")
    for key, value in figures.items():
        if isinstance(value, dict) and "scene_recovery" in value:
            tags = " ".join(
                f"{k}={v:.3f}" for k, v in value.items() if k not in ("overall", "scene_recovery")
            )
            print(f"{key:<16}{value['overall']:>9.4f}{value['scene_recovery']:>8.3f}  {tags}")
    print(
        "false acceptance (32 px): "
        + " ".join(f"{k}={v:.4f}" for k, v in figures["false_acceptance_32"].items())
    )
    for size in (32, 64):
        print(
            f"malformed accepted ({size} px): "
            + " ".join(f"{k}={v:.4f}" for k, v in figures[f"malformed_{size}"].items())
        )
    print("assessor: " + " ".join(f"{k}={v:.4f}" for k, v in figures["assessor"].items()))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
