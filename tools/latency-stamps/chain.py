#!/usr/bin/env python3
"""Where a request's latency goes, stage by stage, from the stamps of a patched build.

Usage (tools/latency-stamps/README.md): python3 tools/latency-stamps/chain.py [DIR]
DIR (default /tmp/stamps) holds one file per process, `<µs since the epoch> <stage>` a line;
the Source is the process that started first (lower pid), the Target the other.
"""
import glob
import os
import sys


def load(path):
    events = []
    for line in open(path):
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            events.append((int(parts[0]), parts[1].strip()))
    # Several threads append to one file: their lines are not in time order.
    return sorted(events)


def after(events, t, name, limit=5000):
    for at, what in events:
        if at >= t and what.startswith(name):
            return at if at - t < limit else None
    return None


def before(events, t, name, limit=5000):
    found = None
    for at, what in events:
        if at > t:
            break
        if what.startswith(name):
            found = at
    return found if found is not None and t - found < limit else None


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "/tmp/stamps"
    files = sorted(glob.glob(os.path.join(folder, "*")), key=lambda p: int(os.path.basename(p)))
    loaded = [load(p) for p in files]
    # The bench's own process stamps only the chunks of the live stream it reads.
    clients = [e for e in loaded if any(w.startswith("client chunk") for _, w in e)]
    sites = [e for e in loaded if not any(w.startswith("client chunk") for _, w in e)]
    if len(sites) != 2:
        sys.exit(f"expected the stamps of two sites in {folder}, found {len(sites)}")
    a, b = sites
    client = clients[0] if clients else None
    links = any(w.startswith("link feed") for _, w in a)
    target = ["decoded", "apply submit", "begin", "apply looped", "flush start", "encoded",
              "inserted", "pre-commit", "committed", "locked", "announced"]
    rows = []
    for t, what in b:
        if not (what.startswith("on_message") and int(what.split()[1]) > 1000):
            continue
        row = {"b on_message": t}
        last = t
        for name in target:
            last = after(b, last, name)
            if last is None:
                break
            row["b " + name] = last
        if last is None:
            continue
        woke = after(b, row["b locked"], "sse woke")
        rendered = after(b, woke, "sse rendered") if woke else None
        sends = [at for at, w in a if at <= t and w.startswith("send") and int(w.split()[1]) > 1000]
        if not (woke and rendered and sends):
            continue
        row["b sse woke"], row["b sse rendered"] = woke, rendered
        if client is not None:
            chunk = after(client, rendered, "client chunk")
            if chunk is None:
                continue
            row["client chunk"] = chunk
        send = sends[-1]
        woken = before(a, send, "on_appended")
        committed = before(a, woken, "committed") if woken else None
        if committed is None:
            continue
        source = {"a committed": committed, "a on_appended": woken, "a send": send}
        if links:
            # Both links: site-a's writer task feeds and flushes, site-b's reader reads.
            feed = after(a, send, "link feed")
            flushed = after(a, feed, "link flushed") if feed else None
            read = before(b, t, "link read")
            if not (feed and flushed and read):
                continue
            source.update({"a link feed": feed, "a link flushed": flushed, "b link read": read})
        rows.append({**source, **row})
    if not rows:
        sys.exit("no request found with all its stages (was the live stream subscribed?)")
    order = list(rows[0])
    print(f"{len(rows)} requests; µs from the stage before (the SSE task wakes on the other core)")
    for prev, cur in zip(order, order[1:]):
        start = "b locked" if cur == "b sse woke" else prev
        v = sorted(r[cur] - r[start] for r in rows)
        print(f"{start:>16} -> {cur:16} p50 {v[len(v) // 2]:6d}  p90 {v[int(len(v) * 0.9)]:6d}  max {v[-1]:6d}")
    v = sorted(r["b sse rendered"] - r["a committed"] for r in rows)
    print(f"Source commit -> event rendered: p50 {v[len(v) // 2]} µs, p90 {v[int(len(v) * 0.9)]} µs")


if __name__ == "__main__":
    main()
