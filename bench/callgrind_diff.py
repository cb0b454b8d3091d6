#!/usr/bin/env python3
"""bench/callgrind_diff.py — where two callgrind runs differ, function by function.

    python3 bench/callgrind_diff.py A.callgrind B.callgrind [N] [--per R]

Prints the N (default 40) functions whose self cost (instructions in the function itself,
not in what it calls) differs most between A and B, as B − A, and the totals. With the two
runs of one proxy that bench/callgrind.sh keeps (FEW and FEW + MANY requests) and
`--per MANY`, that is the profile of one request; with the same run of two builds, it is
what a change did.
"""
import re
import sys
from collections import defaultdict

NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


def self_costs(path):
    """Self cost (Ir) per function name in one callgrind output."""
    names = {}
    costs = defaultdict(int)
    fn = None
    after_calls = False
    # A cost line is its positions (`line`, or `instr line` with --dump-instr=yes), then
    # the events, Ir first.
    ir_at = 1

    def name_of(spec):
        m = NAMED.match(spec)
        if not m:
            return spec
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), spec)

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line or line[0] == "\n":
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if after_calls:
                    after_calls = False  # the call's inclusive cost, not self cost
                    continue
                parts = line.split()
                if len(parts) > ir_at and fn is not None:
                    costs[fn] += int(parts[ir_at])
            elif line.startswith("positions:"):
                ir_at = len(line.split()) - 1
            elif line.startswith("fn="):
                fn = name_of(line[3:].strip())
            elif line.startswith(("cfn=", "cfi=", "cfl=")):
                if line.startswith("cfn="):
                    name_of(line[4:].strip())
            elif line.startswith("calls="):
                after_calls = True
    return costs


def main():
    args = [a for a in sys.argv[1:]]
    per = 1
    if "--per" in args:
        i = args.index("--per")
        per = int(args[i + 1])
        del args[i : i + 2]
    if len(args) not in (2, 3):
        sys.exit(__doc__)
    top = int(args[2]) if len(args) == 3 else 40
    a, b = self_costs(args[0]), self_costs(args[1])
    diff = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
    rows = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top]
    for name, d in rows:
        print(f"{d / per:>10.1f}  {name[:150]}")
    ta, tb = sum(a.values()), sum(b.values())
    print(f"{(tb - ta) / per:>10.1f}  TOTAL ({ta} -> {tb})")


if __name__ == "__main__":
    main()
