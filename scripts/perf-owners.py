#!/usr/bin/env python3
"""Splits a perf profile of the portal by owner: each sample goes to the innermost frame of
ours or of a library we can name (SQLite, the web-session store, the RADIUS client, page
rendering, Leptos's integration, axum/tower, hyper, tokio), so the CPU of a journey reads as
"who asked for it" rather than as a flat list of leaf functions. The writer thread is its own
owner. Needs call stacks: record with PERF_CALL_GRAPH=dwarf,65528 (scripts/bench-journeys.sh,
PERF_KEEP=FILE), then:
    perf script -i FILE -F comm,ip,sym > stacks.txt && scripts/perf-owners.py stacks.txt
Deep async stacks may be cut short by perf's 64 KiB stack copy; such samples still count by
their innermost frames."""
import collections
import sys

OWNERS = [
    ("sqlite (reads on workers)", ("sqlite3", "rusqlite")),
    ("web sessions (layer and store)", ("tower_sessions", "tower_cookies", "web_session")),
    ("radius client/accounting", ("radius_portal::radius", "radius_portal::accounting")),
    ("page render (tachys/leptos view)", ("tachys::", "app::pages", "app::islands", "app::shell",
                                          "leptos_meta", "leptos::hydration", "leptos_router")),
    ("server fn plumbing", ("server_fn::", "handle_server_fns", "radius_portal::http::server_fns")),
    ("portal backend", ("radius_portal::portal_backend", "radius_portal::access_session")),
    ("middleware (ours)", ("radius_portal::http",)),
    ("leptos_axum/integration", ("leptos_axum", "leptos_integration_utils", "reactive_graph",
                                 "any_spawner")),
    ("axum/tower/tower_http", ("axum", "tower")),
    ("hyper", ("hyper",)),
    ("tokio runtime", ("tokio::",)),
]


def samples(path):
    comm, stack = None, None
    for line in open(path, errors="replace"):
        if not line.strip():
            if stack is not None:
                yield comm, stack
            stack = None
        elif not line[0].isspace():
            comm, stack = line.split()[0], []
        elif stack is not None:
            parts = line.strip().split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else parts[0])
    if stack is not None:
        yield comm, stack


def owner(comm, stack):
    if comm.startswith("sqlite-wri"):
        return "writer thread"
    for frame in stack:  # innermost first
        for name, keys in OWNERS:
            if any(k in frame for k in keys):
                return name
    return "kernel/other"


counts = collections.Counter(owner(c, s) for c, s in samples(sys.argv[1]))
total = sum(counts.values()) or 1
for name, n in counts.most_common():
    print(f"{100 * n / total:5.1f}%  {name}")
