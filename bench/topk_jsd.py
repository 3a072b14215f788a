"""Peak memory and time of one forward + backward of the PTD divergence, three ways.

  naive    logits = hidden @ W.T materialised for all N tokens (student and teacher), then
           full_jsd_loss (full-vocabulary JSD, plain autograd)
  topk     the same materialised logits, then topk_jsd_loss (Top-K union support + tail)
  chunked  chunked_topk_jsd_loss from the hidden states (logits only per chunk of tokens)

All float32, loss = mean over tokens, gradients w.r.t. the student hidden states and LM head.
Each configuration runs in a fresh subprocess; its peak memory is the increase of the
process's resident set (VmHWM, reset through /proc/self/clear_refs after the inputs are built
and a tiny warm-up has run) over its resident set at that moment. So it counts everything the
step allocates, the [V, H] weight gradient included, and nothing it inherited.

    python bench/topk_jsd.py            # full run, writes the "## Top-K JSD" section of docs/benchmarks.md
    python bench/topk_jsd.py --quick    # tiny smoke run (in-process, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SECTION = "## Top-K JSD"
PATHS = ("naive", "topk", "chunked")


# ----------------------------------------------------------------------------- measurement


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _make_inputs(torch, n: int, vocab: int, hidden: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, hidden, generator=g).requires_grad_(True)
    # weights scaled so that logits have a std of about 3 (peaked, LM-like distributions)
    w = (torch.randn(vocab, hidden, generator=g) * (3.0 / hidden**0.5)).requires_grad_(True)
    ht = 0.5 * hs.detach() + torch.randn(n, hidden, generator=g)
    wt = 0.5 * w.detach() + torch.randn(vocab, hidden, generator=g) * (2.0 / hidden**0.5)
    return hs, w, ht, wt


def _step(torch, path: str, hs, w, ht, wt, k: int, chunk_size: int):
    from ptdpo.objectives import chunked_topk_jsd_loss, full_jsd_loss, topk_jsd_loss

    if path == "chunked":
        loss = chunked_topk_jsd_loss(hs, w, ht, wt, k=k, support="union", chunk_size=chunk_size).mean()
    else:
        student_logits = hs @ w.T
        with torch.no_grad():
            teacher_logits = ht @ wt.T
        if path == "naive":
            loss = full_jsd_loss(student_logits, teacher_logits).mean()
        else:
            loss = topk_jsd_loss(student_logits, teacher_logits, k, support="union").mean()
        del student_logits, teacher_logits
    loss.backward()
    return float(loss.detach())


def run_config(path: str, n: int, vocab: int, hidden: int, k: int, chunk_size: int, threads: int) -> dict:
    """One configuration, measured in the current process."""
    import torch

    torch.set_num_threads(threads)
    hs, w, ht, wt = _make_inputs(torch, n, vocab, hidden, seed=1234)
    # tiny warm-up: library initialisation and first-call overheads out of the timing
    _step(torch, path, hs[:2].detach().requires_grad_(True), w, ht[:2], wt, k, chunk_size)
    w.grad = None
    rss_before = _status_kib("VmRSS")
    exact = _reset_peak()
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = _step(torch, path, hs, w, ht, wt, k, chunk_size)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if exact and rss_before is not None:
        peak_kib = _status_kib("VmHWM") - rss_before
        method = "VmHWM-reset"
    else:  # lifetime peak: includes the inputs, so an overestimate of the step's own memory
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss"
    return {
        "path": path, "n": n, "vocab": vocab, "hidden": hidden, "k": k, "chunk_size": chunk_size,
        "time_s": elapsed, "cpu_s": cpu, "peak_mib": peak_kib / 1024, "method": method, "loss": loss,
        "grad_w_norm": float(w.grad.norm()), "grad_h_norm": float(hs.grad.norm()),
    }


def _mem_available_mib() -> float:
    try:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        return int(m.group(1)) / 1024 if m else float("inf")
    except OSError:
        return float("inf")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    import torch

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPU cores visible, {total:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__} (CPU), "
        f"{torch.get_num_threads()} threads; 1-min load average at start {load:.1f} (shared machine)"
    )


# ------------------------------------------------------------------------------------ report


METRICS = ("peak_mib", "time_s", "cpu_s")


def _fit(results: list[dict], path: str) -> tuple[list[int], object] | None:
    """Least-squares lines metric = a + b N through the measured points of a path."""
    pts = sorted((r for r in results if r["path"] == path), key=lambda r: r["n"])
    if len(pts) < 2:
        return None
    ns = [r["n"] for r in pts]
    mean_n = sum(ns) / len(ns)
    var = sum((n - mean_n) ** 2 for n in ns)
    lines = {}
    for key in METRICS:
        ys = [r[key] for r in pts]
        mean_y = sum(ys) / len(ys)
        slope = sum((n - mean_n) * (y - mean_y) for n, y in zip(ns, ys)) / var
        lines[key] = (mean_y - slope * mean_n, slope)
    return ns, lambda n: {key: a + b * n for key, (a, b) in lines.items()}


def _rows(results: list[dict], skipped: dict) -> dict[int, dict[str, dict]]:
    """Measured results by N and path, plus extrapolated entries for skipped configurations."""
    by_n: dict[int, dict[str, dict]] = {}
    for r in results:
        by_n.setdefault(r["n"], {})[r["path"]] = dict(r, extrapolated=False)
    for (n, path), why in skipped.items():
        fit = _fit(results, path)
        if fit is not None:
            ns, f = fit
            by_n.setdefault(n, {})[path] = {"n": n, "path": path, **f(n), "extrapolated": True, "from": ns,
                                            "why": why}
    return by_n


def _table(results: list[dict], skipped: dict) -> str:
    lines = [
        "| N tokens | path | peak memory (MiB) | wall time (s) | CPU time (s) | memory vs naive | wall time vs naive "
        "| CPU time vs naive |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_n = _rows(results, skipped)
    notes = []
    for n in sorted(set(by_n) | {n for n, _ in skipped}):
        rows = by_n.get(n, {})
        naive = rows.get("naive")
        for path in PATHS:
            r = rows.get(path)
            if r is None:
                if (n, path) in skipped:
                    lines.append(f"| {n} | {path} | not run: {skipped[(n, path)]} | | | | | |")
                continue
            mark = "*" if r["extrapolated"] or (naive is not None and naive["extrapolated"]) else ""
            ratios = [f"{r[key] / naive[key]:.{3 if key == 'peak_mib' else 2}f}{mark}" if naive else "n/a"
                      for key in METRICS]
            if r["extrapolated"]:
                notes.append(f"N={n} {path} was not run ({r['why']}); its numbers are least-squares lines "
                             f"through the measured N = {', '.join(map(str, r['from']))}")
                values = [f"~{r['peak_mib']:.0f} (extrapolated)", f"~{r['time_s']:.0f}", f"~{r['cpu_s']:.0f}"]
            else:
                values = [f"{r['peak_mib']:.0f}", f"{r['time_s']:.2f}", f"{r['cpu_s']:.2f}"]
            lines.append(f"| {n} | {path} | " + " | ".join(values + ratios) + " |")
    if notes:
        lines += ["", "\\* against extrapolated numbers. " + "; ".join(notes) + "."]
    return "\n".join(lines)


def _summary(results: list[dict], skipped: dict) -> str:
    """The issue's targets at the largest N with a chunked run and a (measured or extrapolated) naive one."""
    by_n = _rows(results, skipped)
    both = [n for n, rows in by_n.items() if "naive" in rows and "chunked" in rows and not rows["chunked"]["extrapolated"]]
    if not both:
        return "Targets: no N with both a naive and a chunked result."
    n = max(both)
    naive, chunked = by_n[n]["naive"], by_n[n]["chunked"]
    mem = chunked["peak_mib"] / naive["peak_mib"]
    wall = chunked["time_s"] / naive["time_s"]
    cpu = chunked["cpu_s"] / naive["cpu_s"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    basis = " (naive extrapolated, see above)" if naive["extrapolated"] else ""
    text = (
        f"Targets at N = {n}{basis}: chunked peak memory = {mem:.3f} x naive (target <= 0.125: "
        f"{verdict(mem <= 0.125)}); chunked time = {wall:.2f} x naive in wall time, {cpu:.2f} x in CPU time "
        f"(target <= 1.5: {verdict(wall <= 1.5)} / {verdict(cpu <= 1.5)})."
    )
    measured = [m for m in both if not by_n[m]["naive"]["extrapolated"]]
    if naive["extrapolated"] and measured:
        m = max(measured)
        naive, chunked = by_n[m]["naive"], by_n[m]["chunked"]
        text += (
            f" At the largest N with a measured naive run (N = {m}): memory {chunked['peak_mib'] / naive['peak_mib']:.3f}"
            f" x, wall time {chunked['time_s'] / naive['time_s']:.2f} x, CPU time {chunked['cpu_s'] / naive['cpu_s']:.2f} x."
        )
    return text


def _slopes(results: list[dict], vocab: int) -> str:
    """Memory growth per token, in units of one float32 vocabulary row (V * 4 bytes)."""
    parts = []
    for path in PATHS:
        fit = _fit(results, path)
        if fit is None:
            continue
        ns, f = fit
        per_token = f(1)["peak_mib"] - f(0)["peak_mib"]
        parts.append(f"{path} {per_token:.3f} MiB (= {per_token * 2**20 / (vocab * 4):.2f} rows of V floats)")
    if not parts:
        return ""
    return ("Peak memory growth per token (least-squares slope over the measured N): " + "; ".join(parts)
            + ". The naive path keeps that many [N, V] float32 tensors alive at its peak; the chunked "
            "path keeps O(K) values per token plus a fixed few [chunk, V] buffers.")


def _section(args, results, skipped, command: str, machine: str) -> str:
    method = sorted({r["method"] for r in results})
    checks = []
    for n in sorted({r["n"] for r in results}):
        rows = {r["path"]: r for r in results if r["n"] == n}
        if "topk" in rows and "chunked" in rows:
            a, b = rows["topk"], rows["chunked"]
            checks.append(
                f"N={n}: loss {a['loss']:.6f} vs {b['loss']:.6f}, |grad W| {a['grad_w_norm']:.6g} vs "
                f"{b['grad_w_norm']:.6g}"
            )
    mode = "in-process (--quick)" if args.quick else "one fresh subprocess per configuration, run one at a time"
    return "\n".join([
        SECTION,
        "",
        "Peak memory and time of one forward + backward of the PTD divergence (loss = mean over "
        "tokens, gradients to the student hidden states and LM head), float32, V = "
        f"{args.vocab}, H = {args.hidden}, K = {args.k} (union support), chunk size {args.chunk_size}.",
        "",
        "- **naive**: `logits = hidden @ W.T` materialised for all N tokens (student and teacher), then "
        "`full_jsd_loss` (full-vocabulary JSD by autograd).",
        "- **topk**: the same materialised logits, then `topk_jsd_loss`.",
        "- **chunked**: `chunked_topk_jsd_loss` from the hidden states (student and teacher "
        "`[N, H]` plus the `[V, H]` heads); logits exist for one chunk of tokens at a time and "
        "are recomputed in backward.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}.",
        "",
        f"Memory method ({', '.join(method)}; {mode}): after the inputs are built and a 2-token "
        "warm-up has run, the process resets its resident-set high-water mark (`echo 5 > "
        "/proc/self/clear_refs`), runs the step, and reports `VmHWM` minus the resident set just "
        "before the step. This counts every page the step touches (autograd buffers, temporaries, "
        f"the {args.vocab}x{args.hidden} float32 weight gradient = "
        f"{args.vocab * args.hidden * 4 / 2**20:.0f} MiB, common to all paths) and none of the "
        "inputs. Times are single runs on a shared machine (other jobs compete for the 2 cores): wall time "
        "includes waiting for a core, CPU time (user + system time of all the process's threads) much less "
        "so; compare ratios rather than absolute times, and expect tens of per cent of noise.",
        "",
        _table(results, skipped),
        "",
        _summary(results, skipped),
        "",
        _slopes(results, args.vocab),
        "",
        "Same quantity, two implementations (topk vs chunked): " + ("; ".join(checks) or "n/a") + ".",
        "",
    ])


def write_section(path: Path, section: str) -> None:
    """Replace the "## Top-K JSD" section (up to the next "## " heading) or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


# -------------------------------------------------------------------------------------- main


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: V=3000, H=64, N in {32, 64}, in-process")
    ap.add_argument("--ns", type=int, nargs="+", default=None, help="token counts (default 256 512 1024 2048 4096)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 151936, Qwen3-VL)")
    ap.add_argument("--hidden", type=int, default=None, help="hidden size (default 2048)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--chunk-size", type=int, default=None, help="chunked path tokens per chunk (default 256)")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write the file")
    ap.add_argument("--json", type=Path, default=None, help="also save the raw per-configuration results here")
    ap.add_argument("--render", type=Path, default=None, help="only re-render the section from a --json file")
    ap.add_argument("--mem-safety", type=float, default=0.85,
                    help="skip a configuration whose predicted peak exceeds this fraction of MemAvailable")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = args.quick
    args.ns = args.ns or ([32, 64] if quick else [256, 512, 1024, 2048, 4096])
    args.vocab = args.vocab or (3000 if quick else 151936)
    args.hidden = args.hidden or (64 if quick else 2048)
    args.chunk_size = args.chunk_size or (16 if quick else 256)
    if quick:
        args.k = min(args.k, 20)
    return args


def _predict_peak_mib(results: list[dict], path: str, n: int, fixed_mib: float) -> float | None:
    """Peak of (path, N) predicted from the smaller N already measured: a least-squares line when
    there are two points or more, else the [V, H] weight gradient plus a part proportional to N."""
    fit = _fit(results, path)
    if fit is not None:
        return fit[1](n)["peak_mib"]
    pts = [r for r in results if r["path"] == path]
    if not pts:
        return None
    r = max(pts, key=lambda r: r["n"])
    return fixed_mib + max(r["peak_mib"] - fixed_mib, 0.0) / r["n"] * n


def _save(path: Path | None, args, results, skipped, command, machine) -> None:
    if path is None:
        return
    params = {key: getattr(args, key) for key in ("vocab", "hidden", "k", "chunk_size", "quick", "ns", "threads")}
    path.write_text(json.dumps({"params": params, "command": command, "machine": machine, "results": results,
                                "skipped": [[n, p, why] for (n, p), why in skipped.items()]}, indent=1))


def main(argv=None) -> int:
    args = _parse(argv)
    if args.worker:
        res = run_config(args.path, args.ns[0], args.vocab, args.hidden, args.k, args.chunk_size, args.threads)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if args.render is not None:  # re-render the section from a saved --json file, no measurement
        saved = json.loads(args.render.read_text())
        for key, value in saved["params"].items():
            setattr(args, key, value)
        skipped = {(n, p): why for n, p, why in saved["skipped"]}
        section = _section(args, saved["results"], skipped, saved["command"], saved["machine"])
        print(section)
        if not args.no_write:
            write_section(args.output, section)
            print(f"wrote {args.output}")
        return 0

    import torch

    torch.set_num_threads(args.threads)
    command = "python bench/topk_jsd.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    machine = _machine()
    results: list[dict] = []
    skipped: dict[tuple[int, str], str] = {}
    fixed_mib = args.vocab * args.hidden * 4 / 2**20
    for n in sorted(args.ns):
        for path in args.paths:
            # never start a configuration that would exhaust the shared machine's memory
            predicted = _predict_peak_mib(results, path, n, fixed_mib)
            available = _mem_available_mib()
            if predicted is not None and predicted > args.mem_safety * available:
                skipped[(n, path)] = (f"predicted {predicted / 1024:.1f} GiB > {args.mem_safety:.0%} of the "
                                      f"{available / 1024:.1f} GiB available")
                print(f"skip {path} N={n}: {skipped[(n, path)]}", flush=True)
                continue
            if args.quick:
                res = run_config(path, n, args.vocab, args.hidden, args.k, args.chunk_size, args.threads)
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--path", path, "--ns", str(n),
                       "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--k", str(args.k),
                       "--chunk-size", str(args.chunk_size), "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    skipped[(n, path)] = f"worker failed (exit {proc.returncode})"
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr, flush=True)
                    continue
                res = json.loads(lines[-1][len("RESULT "):])
            results.append(res)
            _save(args.json, args, results, skipped, command, machine)
            print(f"{path:8s} N={n:5d}  peak {res['peak_mib']:9.1f} MiB  time {res['time_s']:8.2f} s  "
                  f"loss {res['loss']:.6f}", flush=True)
    _save(args.json, args, results, skipped, command, machine)
    section = _section(args, results, skipped, command, machine)
    print(section)
    if not args.no_write:
        write_section(args.output, section)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
