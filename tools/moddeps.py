#!/usr/bin/env python3
"""Module dependency graph inside one crate: which module (file) uses which, from
`crate::…` paths anywhere in code (grouped `use crate::{…}` too), `super::…` paths and a
mod.rs naming its own children; then the cycles (strongly connected components of more
than one module) and the graph between top-level modules, with its cycles. Tests (`#[cfg(test)] mod tests`)
and comments are left out. Exits 1 when there is a cycle.

Usage: python3 tools/moddeps.py crates/site/src"""
import os, re, sys
root = sys.argv[1]
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3]
            parts = rel.split('/')
            if parts[-1] in ('mod', 'lib'):
                parts = parts[:-1]
            files['::'.join(parts) or 'crate'] = p
mods = set(files)
def resolve(path_parts):
    # longest prefix that is a module file
    for n in range(len(path_parts), 0, -1):
        m = '::'.join(path_parts[:n])
        if m in mods:
            return m
    return None
edges = {m: set() for m in mods}
for m, p in files.items():
    src = open(p).read()
    # strip test modules
    src = re.split(r'#\[cfg\(test\)\]\s*mod tests', src)[0]
    # strip comments
    src = re.sub(r'//[^\n]*', '', src)
    own = m.split('::') if m != 'crate' else []
    is_dir_mod = os.path.basename(p) in ('mod.rs', 'lib.rs')
    parent = own if is_dir_mod else own[:-1]
    # crate:: paths, including grouped use crate::{a, b::c}
    for g in re.finditer(r'crate::\{([^}]*)\}', src):
        for item in g.group(1).split(','):
            parts = [x for x in re.findall(r'\w+', item.split(' as ')[0]) if x != 'self']
            t = resolve(parts)
            if t and t != m: edges[m].add(t)
    for g in re.finditer(r'crate::((?:\w+::)*\w+)', src):
        t = resolve(g.group(1).split('::'))
        if t and t != m: edges[m].add(t)
    for g in re.finditer(r'(?<![\w:])super::((?:\w+::)*\w+)', src):
        t = resolve(own[:-1] + g.group(1).split('::'))
        if t and t != m: edges[m].add(t)
    # a mod.rs or lib.rs naming its own child modules (peer::spawn, use sync::X)
    if is_dir_mod:
        for c in mods:
            cp = c.split('::')
            if c != 'crate' and cp[:-1] == own and re.search(r'(?<![\w:])' + cp[-1] + r'::', src):
                edges[m].add(c)
# Tarjan
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges[v]:
        if w not in idx:
            sc(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
for v in sorted(mods):
    if v not in idx: sc(v)
for m in sorted(mods):
    print(f"{m:22} -> {', '.join(sorted(edges[m])) or '-'}")
cyc = [sorted(s) for s in sccs if len(s) > 1]
print()
if not cyc:
    print("no cycles")
for s in cyc:
    print(f"cycle of {len(s)} files: {', '.join(s)}")
exit_code = 1 if cyc else 0
# top-level module graph
top = {}
for m, ts in edges.items():
    a = m.split('::')[0]
    for t in ts:
        b = t.split('::')[0]
        if a != b: top.setdefault(a, set()).add(b)
print()
print("top-level modules:")
for a in sorted(top): print(f"  {a:10} -> {', '.join(sorted(top[a]))}")
# The same between top-level modules (a folder and its files as one).
def reaches(a, b, seen=None):
    seen = seen or set()
    for n in top.get(a, ()):
        if n == b:
            return True
        if n not in seen:
            seen.add(n)
            if reaches(n, b, seen):
                return True
    return False
loops = sorted({tuple(sorted((a, b))) for a in top for b in top[a] if reaches(b, a)})
for a, b in loops:
    print(f"top-level cycle through {a} and {b}")
if loops:
    exit_code = 1
sys.exit(exit_code)
