#!/usr/bin/env python3
"""Measures bytes transferred (brotli) for a first visit to the login page and the session page.

Usage: start a portal (e.g. `PORTAL_HTTP_LISTEN=127.0.0.1:3999 target/release/radius-portal demo`),
then `scripts/page-weight.py http://127.0.0.1:3999 alice alice-pass`.
Counts the HTML and every asset the page references (/pkg/...), as a browser downloads them.
"""
import http.cookiejar
import re
import sys
import urllib.parse
import urllib.request

base, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
jar = http.cookiejar.CookieJar()
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
HEADERS = {"Accept-Encoding": "br", "Accept": "text/html"}


def fetch(path, data=None, extra=None):
    headers = dict(HEADERS, **(extra or {}))
    req = urllib.request.Request(base + path, data=data, headers=headers)
    with opener.open(req) as resp:
        body = resp.read()
        return resp.geturl(), len(body), body


def page_weight(path, data=None, extra=None):
    url, size, body = fetch(path, data, extra)
    # The HTML is brotli-compressed: decode it only to find the assets it references.
    try:
        import brotli  # type: ignore

        html = brotli.decompress(body).decode()
    except Exception:
        _, _, plain = fetch_plain(urllib.parse.urlparse(url).path)
        html = plain.decode()
    assets = set(re.findall(r'(/pkg/[^"]+)', html))
    # The island loader names its JS and WASM as arguments: (root, pkg, js name, wasm name, …).
    for root, pkg, js, wasm in re.findall(
        r'\("([^"]*)", "([^"]+)", "([^"]+)", "([^"]+)", (?:true|false)\)', html
    ):
        assets.update({f"{root}/{pkg}/{js}.js", f"{root}/{pkg}/{wasm}.wasm"})
    assets = sorted(assets)
    rows = [("html " + urllib.parse.urlparse(url).path, size)]
    for asset in assets:
        rows.append((asset, fetch(asset)[1]))
    return rows


def fetch_plain(path):
    req = urllib.request.Request(base + path, headers={"Accept": "text/html"})
    with opener.open(req) as resp:
        return resp.geturl(), 0, resp.read()


login_rows = page_weight("/")
# The login form carries the web session's form token (CSRF); post it like the browser does.
token = re.search(r'name="csrf" value="([0-9a-f]+)"', fetch_plain("/")[2].decode()).group(1)
for name, rows in [
    ("login page", login_rows),
    (
        "session page",
        page_weight(
            "/api/login",
            urllib.parse.urlencode({"username": user, "password": password, "csrf": token}).encode(),
            {"Referer": base + "/", "Origin": base},
        ),
    ),
]:
    total = sum(size for _, size in rows)
    print(f"{name}: {total} bytes ({total / 1024:.1f} KB)")
    for what, size in rows:
        print(f"  {size:>8}  {what}")
