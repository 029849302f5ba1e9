#!/usr/bin/env python3
"""Summarise bench/run.sh's results file as Markdown tables and PASS/FAIL per goal.

usage: report.py RESULTS_FILE

Lines of RESULTS_FILE (written by bench/run.sh):
    run CASE TOOL RUN WALL_S TREE_PEAK_KIB MAX_PROCESS_RSS_KIB EXIT_CODE
    reason CASE TOOL RUN TEXT...      why a measured command failed
    did CASE TOOL RUN TEXT...         what blumeops did: steps that ran, what it pushed
    layers TOOL RUN N                 layers differing between the cold and changed images
    requests CASE TOOL RUN N KINDS... requests the registry served during the command, and
                                      of which kind (METHOD:STATUS=COUNT)
    bytes RUN N                       size of the large image (config + layers + manifest)
    ceilingbytes RUN N                size of the blob the ceiling (curl) uploads
    pushphase RUN SECONDS             blumeops' own timer for the upload in the push case
    engineload SECONDS                the docker executor's first build (engine image load
                                      + a cold build, on another volume), not a goal
"""

import statistics
import sys
from collections import defaultdict

GOAL_RSS_MIB = 32
GOAL_CEILING = 0.95


def main():
    runs = defaultdict(list)  # (case, tool) -> [(run, wall, tree, rss, code)]
    reasons = defaultdict(list)  # (case, tool) -> [text]
    layers = defaultdict(list)  # tool -> [n]
    sizes, pushphase, did, engineload, ceiling_sizes = [], [], [], [], []
    requests = defaultdict(list)  # (case, tool) -> [(run, n, kinds)]
    for line in open(sys.argv[1]):
        f = line.split()
        if not f:
            continue
        if f[0] == "run":
            _, case, tool, run, wall, tree, rss, code = f
            runs[case, tool].append((int(run), float(wall), int(tree), int(rss), int(code)))
        elif f[0] == "reason":
            reasons[f[1], f[2]].append(f"run {f[3]}: " + " ".join(f[4:]))
        elif f[0] == "did":
            did.append(f"{f[1]}, run {f[3]}: " + " ".join(f[4:]))
        elif f[0] == "layers":
            layers[f[1]].append(int(f[3]))
        elif f[0] == "requests":
            requests[f[1], f[2]].append((int(f[3]), int(f[4]), " ".join(f[5:])))
        elif f[0] == "bytes":
            sizes.append(int(f[2]))
        elif f[0] == "ceilingbytes":
            ceiling_sizes.append(int(f[2]))
        elif f[0] == "pushphase":
            pushphase.append(float(f[2]))
        elif f[0] == "engineload":
            engineload.append(float(f[1]))
    n_runs = max((r[0] for rs in runs.values() for r in rs), default=0)

    def ran(case, tool):
        return bool(runs.get((case, tool)))

    def ok(case, tool):
        rs = runs.get((case, tool), [])
        return bool(rs) and all(r[4] == 0 for r in rs)

    def med(case, tool, col=1):
        """Median of a column over the successful runs, or None."""
        vals = [r[col] for r in runs.get((case, tool), []) if r[4] == 0]
        return statistics.median(vals) if vals else None

    def secs(case, tool):
        v = med(case, tool)
        if v is not None and ok(case, tool):
            return f"{v:.2f} s"
        codes = sorted({r[4] for r in runs.get((case, tool), []) if r[4] != 0})
        failed = "failed (exit " + ", ".join(map(str, codes)) + ")" if codes else "not run"
        return failed if v is None else f"{v:.2f} s, {failed} in some runs"

    def mib(case, tool, col):
        vals = [r[col] for r in runs.get((case, tool), [])]
        return f"{max(vals) / 1024:.1f} MiB" if vals else "—"

    def ratio(a, b):
        return a / b if a is not None and b else None

    def fmt(x, digits=2):
        return "—" if x is None else f"{x:.{digits}f}"

    def verdict(passed):
        return "PASS" if passed else "FAIL"

    def judged(peer, passed):
        """The verdict of a goal against `peer`, or a dash when the peer's group did not run."""
        return verdict(passed) if any(t == peer for (_, t) in runs) else "— (not run)"

    goals = []  # (passed, text)

    if ran("cold", "blumeops") or ran("cold", "buildah"):
        print(f"### Build scenario (median of {n_runs} run{'s' if n_runs != 1 else ''})")
        print()
        print("| case | blumeops | buildah | ratio | goal | result |")
        print("|---|---|---|---|---|---|")

        cold = ratio(med("cold", "blumeops"), med("cold", "buildah"))
        passed = ok("cold", "blumeops") and ok("cold", "buildah") and cold is not None and cold <= 0.5
        why = "" if ok("cold", "blumeops") else ": blumeops failed"
        print(f"| cold build + push | {secs('cold', 'blumeops')} | {secs('cold', 'buildah')} | "
              f"{fmt(cold)} | ≤ 0.50 × buildah | {judged('buildah', passed)}{why} |")
        if ran("cold", "buildah"):
            goals.append((passed, f"cold build + push ≤ 0.5 × buildah: {fmt(cold)} ×{why}"))

        warm = ratio(med("warm", "blumeops"), med("warm", "buildah"))
        passed = ok("warm", "blumeops") and ok("warm", "buildah") and warm is not None and warm <= 0.1
        why = ""
        if not ok("warm", "blumeops"):
            why = ": " + "; ".join(reasons.get(("warm", "blumeops"), ["blumeops failed"]))
            warm = None
        print(f"| warm rebuild + push, nothing changed (same tag) | {secs('warm', 'blumeops')} | "
              f"{secs('warm', 'buildah')} | {fmt(warm)} | ≤ 0.10 × buildah | {judged('buildah', passed)}{why} |")
        if ran("warm", "buildah"):
            goals.append((passed, f"warm rebuild + push ≤ 0.1 × buildah: "
                                  f"{fmt(warm) + ' ×' if warm is not None else 'no figure'}{why}"))

        changed = ratio(med("changed", "blumeops"), med("cold", "blumeops"))
        buildah_changed = ratio(med("changed", "buildah"), med("cold", "buildah"))
        diff = layers.get("blumeops", [])
        one_layer = bool(diff) and all(n == 1 for n in diff)
        passed = ok("changed", "blumeops") and changed is not None and changed <= 0.5 and one_layer
        differing = ", ".join(map(str, diff)) or "unknown"
        differing_buildah = ", ".join(map(str, layers.get("buildah", []))) or "unknown"
        print(f"| one source file changed, new tag | {secs('changed', 'blumeops')} "
              f"({fmt(changed)} × its cold; {differing} layer(s) differ) | "
              f"{secs('changed', 'buildah')} ({fmt(buildah_changed)} × its cold; "
              f"{differing_buildah} layer(s) differ) | {fmt(ratio(med('changed', 'blumeops'), med('changed', 'buildah')))} | "
              f"≤ 0.50 × blumeops cold, exactly 1 layer differs | {verdict(passed)} |")
        goals.append((passed, f"one changed file ≤ 0.5 × cold: {fmt(changed)} ×, "
                              f"layers differing: {differing}"))
        print()
        print("Ratio: blumeops / buildah. Layers differing: the cold and the changed image's "
              "manifests compared position by position, per run.")
        print()

    if ran("cold", "rootless"):
        print(f"### Rootless executor (median of {n_runs})")
        print()
        print("| case | root | rootless | ratio | goal | result |")
        print("|---|---|---|---|---|---|")
        rc = ratio(med("cold", "rootless"), med("cold", "blumeops"))
        passed = ok("cold", "rootless") and rc is not None and rc <= 1.2
        print(f"| cold build + push | {secs('cold', 'blumeops')} | {secs('cold', 'rootless')} | "
              f"{fmt(rc)} | ≤ 1.20 × root | {verdict(passed)} |")
        goals.append((passed, f"rootless cold ≤ 1.2 × root: {fmt(rc)} ×"))
        rw_root, rw = med("warm", "blumeops"), med("warm", "rootless")
        delta = rw - rw_root if rw is not None and rw_root is not None else None
        passed = ok("warm", "rootless") and delta is not None and delta <= 0.05
        print(f"| warm rebuild + push | {secs('warm', 'blumeops')} | {secs('warm', 'rootless')} | "
              f"{fmt(ratio(rw, rw_root))} | equal (within 0.05 s) | {verdict(passed)} |")
        goals.append((passed, f"rootless warm equal to root (within 0.05 s): "
                              f"{'+' if delta is not None and delta >= 0 else ''}{fmt(delta, 3)} s"))
        print(f"| one file changed | {secs('changed', 'blumeops')} | {secs('changed', 'rootless')} | "
              f"{fmt(ratio(med('changed', 'rootless'), med('changed', 'blumeops')))} | | |")
        print()
        print("Rootless: the same `blumeops publish` as an unprivileged user with a subordinate id "
              "range, on its own cache (user namespace, overlayfs with userxattr).")
        print()

    if ran("cold", "docker"):
        print(f"### Docker executor (median of {n_runs})")
        print()
        print("| case | root (host) | docker executor | ratio | goal | result |")
        print("|---|---|---|---|---|---|")
        dc = ratio(med("cold", "docker"), med("cold", "blumeops"))
        passed = ok("cold", "docker") and dc is not None and dc <= 1.3
        print(f"| cold build + push | {secs('cold', 'blumeops')} | {secs('cold', 'docker')} | "
              f"{fmt(dc)} | ≤ 1.30 × host | {verdict(passed)} |")
        goals.append((passed, f"docker executor cold ≤ 1.3 × host: {fmt(dc)} ×"))
        dw_root, dw = med("warm", "blumeops"), med("warm", "docker")
        over = dw - dw_root if dw is not None and dw_root is not None else None
        passed = ok("warm", "docker") and over is not None and over <= 1.0
        print(f"| warm rebuild + push | {secs('warm', 'blumeops')} | {secs('warm', 'docker')} | "
              f"{fmt(ratio(dw, dw_root))} | ≤ host + 1 s | {verdict(passed)} |")
        goals.append((passed, f"docker executor warm overhead ≤ 1 s: "
                              f"{'+' if over is not None and over >= 0 else ''}{fmt(over, 2)} s"))
        print(f"| one file changed | {secs('changed', 'blumeops')} | {secs('changed', 'docker')} | "
              f"{fmt(ratio(med('changed', 'docker'), med('changed', 'blumeops')))} | | |")
        print()
        print("Docker executor: the same `blumeops publish` with `--executor docker` against "
              "Debian's dockerd on this machine (host network), a cache volume per run; the "
              "engine image was loaded before the runs"
              + (f" (that first build, load included, took {engineload[0]:.2f} s)" if engineload else "")
              + ". Its memory is the client's alone (the engine runs under dockerd).")
        print()

    if ran("cold", "buildkit"):
        print(f"### BuildKit, the second peer (median of {n_runs})")
        print()
        print("| case | blumeops | BuildKit | ratio | buildah |")
        print("|---|---|---|---|---|")
        for case, label in [("cold", "cold build + push"),
                            ("warm", "warm rebuild + push, nothing changed"),
                            ("changed", "one source file changed, new tag")]:
            print(f"| {label} | {secs(case, 'blumeops')} | {secs(case, 'buildkit')} | "
                  f"{fmt(ratio(med(case, 'blumeops'), med(case, 'buildkit')))} | {secs(case, 'buildah')} |")
        print()
        print("BuildKit: the builder in Debian's dockerd (the daemon the docker executor uses), "
              "`DOCKER_BUILDKIT=1 /usr/bin/docker build --network host` + `docker push`, its build "
              "cache emptied before the cold case. Ratio: blumeops / BuildKit. Its memory is the "
              "CLI's alone (the build runs in dockerd), so it is not compared. Layers differing "
              f"between its cold and changed images: {', '.join(map(str, layers.get('buildkit', []))) or 'unknown'}.")
        print()

    if ran("newmachine", "blumeops"):
        print(f"### New machine, warm registry cache (median of {n_runs})")
        print()
        print("| | blumeops | buildah | ratio | goal | result |")
        print("|---|---|---|---|---|---|")
        nm_cold = ratio(med("newmachine", "blumeops"), med("cold", "blumeops"))
        passed = ok("newmachine", "blumeops") and nm_cold is not None and nm_cold <= 0.25
        print(f"| empty local cache, registry cache filled by another machine | "
              f"{secs('newmachine', 'blumeops')} ({fmt(nm_cold)} × its cold) | "
              f"{secs('newmachine', 'buildah')} "
              f"({fmt(ratio(med('newmachine', 'buildah'), med('cold', 'buildah')))} × its cold) | "
              f"{fmt(ratio(med('newmachine', 'blumeops'), med('newmachine', 'buildah')))} | "
              f"≤ 0.25 × blumeops cold | {verdict(passed)} |")
        goals.append((passed, f"new machine, warm registry cache ≤ 0.25 × cold: {fmt(nm_cold)} ×"))
        nm_peer = ratio(med("newmachine", "blumeops"), med("newmachine", "buildah"))
        passed = (ok("newmachine", "blumeops") and ok("newmachine", "buildah")
                  and nm_peer is not None and nm_peer <= 0.5)
        print(f"| the same, against buildah `--layers --cache-from/--cache-to` | | | {fmt(nm_peer)} | "
              f"≤ 0.50 × buildah | {verdict(passed)} |")
        goals.append((passed, f"new machine, warm registry cache ≤ 0.5 × buildah: {fmt(nm_peer)} ×"))
        print()
        print("Another machine (its own empty cache / storage) published the scenario with the "
              "registry cache on (`--cache-repo auto`; buildah `--cache-to` to a repository of "
              "the same registry), not measured; then this machine published it from an empty "
              "cache and a copy of the checkout at another path, to a new tag.")
        print()

    print("### Peak memory (largest over the runs)")
    print()
    print("| case | blumeops tree | blumeops largest process | peer | peer tree | peer largest process |")
    print("|---|---|---|---|---|---|")
    for case, peer, label in [("cold", "buildah", "cold build + push"),
                              ("warm", "buildah", "warm rebuild + push"),
                              ("retag", "buildah", "warm rebuild + push to a new tag"),
                              ("changed", "buildah", "one file changed"),
                              ("newmachine", "buildah", "new machine, warm registry cache"),
                              ("push", "skopeo", "push of the large image")]:
        if not (ran(case, "blumeops") or ran(case, peer)):
            continue
        print(f"| {label} | {mib(case, 'blumeops', 2)} | {mib(case, 'blumeops', 3)} | {peer} | "
              f"{mib(case, peer, 2)} | {mib(case, peer, 3)} |")
    for tool, label in [("rootless", "rootless"), ("docker", "docker executor (its client)")]:
        for case in ("cold", "warm", "changed"):
            if ran(case, tool):
                print(f"| {case}, {label} | {mib(case, tool, 2)} | {mib(case, tool, 3)} | | | |")
    print()
    print("Tree: the sum of PSS over the command and all its descendants, sampled every 20 ms "
          "(the registry is not part of it). Largest process: the largest peak RSS of a single "
          "process of the tree, as /usr/bin/time reports.")
    print()

    size = statistics.median(sizes) if sizes else None
    if ran("push", "blumeops"):
        print(f"### Push of an already built image"
              f"{f' of {size / 2**20:.0f} MiB' if size else ''} (median of {n_runs})")
        print()
        print("| | blumeops | skopeo | ceiling: curl PUT | ceiling: curl PATCH + PUT | goal | result |")
        print("|---|---|---|---|---|---|---|")
        tb, ts = med("push", "blumeops"), med("push", "skopeo")
        mb = size / 2**20 / tb if size and tb and ok("push", "blumeops") else None
        ms = size / 2**20 / ts if size and ts and ok("push", "skopeo") else None
        csize = statistics.median(ceiling_sizes) if ceiling_sizes else None
        tput, tpatch = med("push", "ceiling-put"), med("push", "ceiling-patch")
        mput = csize / 2**20 / tput if csize and tput and ok("push", "ceiling-put") else None
        mpatch = csize / 2**20 / tpatch if csize and tpatch and ok("push", "ceiling-patch") else None
        # The ceiling: the faster of the registry's two ways to take the blob.
        mc = max((m for m in (mput, mpatch) if m is not None), default=None)
        thr = ratio(mb, ms)
        passed = thr is not None and thr >= 1.0
        print(f"| wall time | {secs('push', 'blumeops')} | {secs('push', 'skopeo')} | "
              f"{secs('push', 'ceiling-put')} | {secs('push', 'ceiling-patch')} | | |")
        print(f"| throughput | {fmt(mb, 0)} MiB/s | {fmt(ms, 0)} MiB/s | {fmt(mput, 0)} MiB/s | "
              f"{fmt(mpatch, 0)} MiB/s | | |")
        print(f"| blumeops / skopeo (throughput) | {fmt(thr)} | | | | ≥ 1.00 × skopeo | "
              f"{verdict(passed)} |")
        goals.append((passed, f"push throughput ≥ skopeo: {fmt(thr)} ×"))
        cb, cs = ratio(mb, mc), ratio(ms, mc)
        passed = cb is not None and cb >= GOAL_CEILING
        print(f"| × the ceiling (the faster curl upload) | {fmt(cb)} | {fmt(cs)} | "
              f"{fmt(ratio(mput, mc))} | {fmt(ratio(mpatch, mc))} | ≥ {GOAL_CEILING:.2f} × ceiling | "
              f"{verdict(passed)} |")
        goals.append((passed, f"push throughput ≥ {GOAL_CEILING} × the registry's ceiling: {fmt(cb)} × "
                              f"(skopeo {fmt(cs)} ×)"))
        if pushphase:
            p = statistics.median(pushphase)
            mp = size / 2**20 / p if size else None
            print(f"| blumeops' upload alone (its own `pushed … in` timer) | {p:.2f} s, "
                  f"{fmt(mp, 0)} MiB/s ({fmt(ratio(mp, mc))} × ceiling) | | | | | |")
        print()
        print("Throughput: the image's size (blumeops, skopeo) or the large layer's (the ceiling) "
              "over the wall time. The ceiling is the registry's own ingest of the large layer's "
              "blob, sent by curl with the same credentials to a new repository: POST, then one "
              "`PUT` carrying the blob, or one streamed `PATCH` and a closing `PUT`.")
        print()

    if requests:
        print("### Requests the registry served (from its access log)")
        print()
        print("| case | tool | requests | of which |")
        print("|---|---|---|---|")
        order = ["cold", "warm", "retag", "changed", "newmachine", "push"]
        for (case, tool) in sorted(requests, key=lambda k: (order.index(k[0]) if k[0] in order
                                                             else len(order), k[1])):
            rs = sorted(requests[case, tool])
            counts = sorted({n for _, n, _ in rs})
            n = "/".join(map(str, counts)) + ("" if len(counts) == 1 else " (differs per run)")
            print(f"| {case} | {tool} | {n} | {rs[0][2] or '—'} |")
        print()
        print("Of which: METHOD:STATUS=COUNT, in the order of first use, from the first run.")
        print()

    if ran("retag", "blumeops"):
        counts = [n for _, n, _ in requests.get(("retag", "blumeops"), [])]
        passed = ok("retag", "blumeops") and bool(counts) and max(counts) <= 3
        goals.append((passed, f"rebuild to a new tag, nothing changed: "
                              f"{'/'.join(map(str, sorted(set(counts)))) or 'no'} request(s) "
                              f"(the base's resolution, the tag check, the manifest: ≤ 3)"))

    trees = [(r[2], case) for (case, tool), rs in runs.items()
             if tool in ("blumeops", "rootless", "docker") for r in rs]
    peak, where = max(trees) if trees else (None, "")
    passed = peak is not None and peak <= GOAL_RSS_MIB * 1024
    goals.append((passed, f"blumeops peak memory ≤ {GOAL_RSS_MIB} MiB throughout: "
                          f"{fmt(peak / 1024 if peak else None, 1)} MiB (tree, in case {where})"))

    if did:
        print("### What blumeops did")
        print()
        for text in did:
            print(f"- {text}")
        print()

    print("### Goals")
    print()
    for passed, text in goals:
        print(f"- {verdict(passed)} {text}")
    for (case, tool), texts in sorted(reasons.items()):
        if (case, tool) != ("warm", "blumeops"):
            for text in texts:
                print(f"- note: {case}/{tool} failed, {text}")


if __name__ == "__main__":
    main()
