"""Build the real zoos that the metanetwork, augmentation and pruning work uses, with
the repo's own command, and record each build's exact command and wall time.

    python benchmarks/build_zoos.py                       # every zoo, both executors
    python benchmarks/build_zoos.py --only digits_cnn --executor batched

Zoos land in ``zoos/`` (kept out of git). A zoo folder that already exists is removed
first, so that every recorded time is a build from nothing. Results go to
``benchmarks/results/zoo_builds.json`` and into the "Real zoos" section of
``benchmarks/zoo.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "zoo_builds.json"
MARK_BEGIN, MARK_END = "<!-- real-zoos:begin -->", "<!-- real-zoos:end -->"

ZOOS = {  # name -> (recipe, networks)
    "digits_cnn": ("digits_cnn", 1000),
    "digits_siren": ("digits_siren", 1000),
    "mixed": ("mixed", 500),
}


def command(name: str, executor: str) -> list[str]:
    recipe, n = ZOOS[name]
    return ["metanet", "zoo", "build", "--recipe", recipe, "--n", str(n),
            "--out", f"zoos/{name}_{executor}", "--executor", executor, "--quiet"]


def summary(path: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    import zoo

    z = zoo.Zoo.open(path)
    last = z.where(step="last")
    out = {"networks": len(z.jobs()), "checkpoints": len(z), "steps": z.steps,
           "mib": sum(f.stat().st_size for f in (path / "shards").glob("*.safetensors")) / 2 ** 20}
    for metric in ("test_acc", "psnr"):
        try:
            vals = last.targets(metric)
            out[f"last_{metric}_mean"] = float(vals.mean())
        except Exception:
            pass
    return out


def markdown(results: dict) -> str:
    lines = [MARK_BEGIN, "", "## Real zoos", "",
             "Built by `python benchmarks/build_zoos.py` from an empty folder each, on this machine "
             "(2 cores). They stay out of git (`zoos/`).", "",
             "| zoo | executor | command | networks | checkpoints | shards | build time |",
             "|---|---|---|---|---|---|---|"]
    for key in sorted(results["builds"]):
        b = results["builds"][key]
        s = b.get("summary", {})
        extra = (f", last test acc {s['last_test_acc_mean']:.3f}" if "last_test_acc_mean" in s else
                 f", last PSNR {s['last_psnr_mean']:.1f} dB" if "last_psnr_mean" in s else "")
        lines.append(f"| {b['zoo']} | {b['executor']} | `{' '.join(b['command'])}` | {s.get('networks', '?')} "
                     f"| {s.get('checkpoints', '?')} | {s.get('mib', 0):.1f} MiB{extra} | "
                     f"{b['seconds']:.0f} s ({b['seconds'] / 60:.1f} min) |")
    lines += ["", MARK_END]
    return "\n".join(lines)


def write_markdown(results: dict, md: Path) -> None:
    text = md.read_text() if md.exists() else "# Zoo benchmark\n"
    section = markdown(results)
    if MARK_BEGIN in text and MARK_END in text:
        a, b = text.index(MARK_BEGIN), text.index(MARK_END) + len(MARK_END)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    md.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(ZOOS), action="append")
    p.add_argument("--executor", choices=["sequential", "batched"], action="append")
    p.add_argument("--markdown", default=str(HERE / "zoo.md"))
    args = p.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"builds": {}}
    results["machine"] = f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"
    for name in args.only or list(ZOOS):
        for executor in args.executor or ["sequential", "batched"]:
            cmd = command(name, executor)
            out = ROOT / cmd[cmd.index("--out") + 1]
            if out.exists():
                shutil.rmtree(out)
            print("$", " ".join(cmd), flush=True)
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT)
            seconds = time.perf_counter() - t
            if proc.returncode != 0:
                print(f"build failed (exit {proc.returncode}); nothing recorded for it", file=sys.stderr)
                return proc.returncode
            results["builds"][f"{name}/{executor}"] = {
                "zoo": name, "executor": executor, "command": cmd, "seconds": seconds,
                "summary": summary(out), "date": time.strftime("%Y-%m-%d %H:%M")}
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2))  # after each build: nothing lost
            write_markdown(results, Path(args.markdown))
            print(f"{name} ({executor}): {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
