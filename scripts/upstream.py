"""Write a patch that contributes Q-SAM2 to a host framework, generated from this project's own files.

    python scripts/upstream.py torchao --out qsam2-torchao.patch [--ao PATH]   # pytorch/ao at tag v0.18.0
    python scripts/upstream.py nncf --out qsam2-nncf.patch

Each target lives in its own module (``upstream_<target>.py``, ``build_patch(out_path, **options)``), imported only
when asked for.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

TARGETS = ("torchao", "nncf")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--out", required=True, type=pathlib.Path, help="patch file to write")
    parser.add_argument("--ao", type=pathlib.Path, default=None,
                        help="torchao target: a pytorch/ao checkout at v0.18.0 (default: $QSAM2_AO_TREE)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    try:
        module = importlib.import_module(f"upstream_{args.target}")
    except ModuleNotFoundError as e:
        if e.name != f"upstream_{args.target}":
            raise
        print(f"upstream.py: the {args.target} target is not available here (scripts/upstream_{args.target}.py is "
              "missing)", file=sys.stderr)
        return 2
    options = {"ao_tree": args.ao} if args.target == "torchao" else {}
    try:
        module.build_patch(args.out, **options)
    except (ValueError, FileNotFoundError) as e:
        print(f"upstream.py {args.target}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
