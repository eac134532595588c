// Configuration-file pieces shared by the global set-up and the tests' own portals.

/** One `[[organizations]]` entry with the shared FreeRADIUS (strict auth port, acct port) as its
 *  only server; `extra` is appended inside the entry (e.g. its `[organizations.branding]`). */
export function organizationToml(id: string, name: string, strict: string | number, acct: string | number, extra = ""): string {
  return `[[organizations]]
id = "${id}"
name = "${name}"
nas_identifier = "portal-e2e-${id}"
[[organizations.servers]]
name = "freeradius"
address = "127.0.0.1"
auth_port = ${strict}
acct_port = ${acct}
secret = "testing123"
timeout = "1s"
${extra}`;
}

/** `[http]` (listen, optional built-in TLS), `[database]` and `[radius]` of a test portal. */
export function portalToml(port: number, database: string, tls?: { cert: string; key: string }): string {
  const tlsTable = tls ? `[http.tls]\ncert_file = "${tls.cert}"\nkey_file = "${tls.key}"\n` : "";
  return `[http]
listen = "127.0.0.1:${port}"
${tlsTable}[database]
path = "${database}"
[radius]
bind = "127.0.0.1"
`;
}
