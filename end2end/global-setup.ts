// Starts FreeRADIUS (config from server/tests/fixtures/freeradius) and the portal binary built by
// `cargo leptos build`, each on free loopback ports; exports PORTAL_URL for the tests and returns
// the teardown that stops both.
import { spawn, ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { organizationToml, portalToml } from "./config";
import { freeTcpPort, freeUdpPort } from "./ports";

const root = path.resolve(__dirname, "..");

async function waitFor(what: string, timeoutMs: number, check: () => Promise<boolean> | boolean) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export default async function globalSetup() {
  const state = fs.mkdtempSync(path.join(os.tmpdir(), "portal-e2e-"));
  const [auth, acct, strict, http, dynauth] = [
    await freeUdpPort(),
    await freeUdpPort(),
    await freeUdpPort(),
    await freeTcpPort(),
    await freeUdpPort(),
  ];

  const radiusLog = path.join(state, "radius.log");
  const radius = spawn(
    "freeradius",
    ["-f", "-d", path.join(root, "server/tests/fixtures/freeradius"), "-l", radiusLog],
    {
      env: {
        ...process.env,
        RADIUS_AUTH_PORT: String(auth),
        RADIUS_ACCT_PORT: String(acct),
        RADIUS_STRICT_PORT: String(strict),
        RADIUS_STATE_DIR: state,
      },
      stdio: "ignore",
    },
  );
  await waitFor("FreeRADIUS to be ready", 15_000, () => {
    if (exited(radius)) throw new Error(`FreeRADIUS exited: ${fs.readFileSync(radiusLog, "utf8")}`);
    return fs.existsSync(radiusLog) && fs.readFileSync(radiusLog, "utf8").includes("Ready to process requests");
  });

  // Beta's branding: a logo file, an accent colour, a help line and a contact.
  const logo = path.join(state, "beta-logo.svg");
  fs.writeFileSync(
    logo,
    `<svg xmlns="http://www.w3.org/2000/svg" width="160" height="48" viewBox="0 0 160 48">` +
      `<rect width="48" height="48" rx="10" fill="#0f766e"/><circle cx="24" cy="24" r="12" fill="#fff"/>` +
      `<text x="58" y="32" font-family="sans-serif" font-size="22" fill="#0f766e">Beta</text></svg>`,
  );
  const config = path.join(state, "portal.toml");
  fs.writeFileSync(
    config,
    portalToml(http, path.join(state, "portal.db")) +
      organizationToml("e2e", "End-to-End Org", strict, acct) +
      organizationToml(
        "beta",
        "Beta Branch Office",
        strict,
        acct,
        `[organizations.branding]
accent_color = "#0f766e"
logo_file = "${logo}"
help_text = "Guests: your sign-in details are on the card at the front desk."
contact = "it-help@beta.example, ext. 4242"
`,
      ) +
      `[dynamic_authorization]
listen = "127.0.0.1:${dynauth}"
[[dynamic_authorization.clients]]
name = "radclient"
address = "127.0.0.1"
secret = "testing123"
`,
  );
  const portalLog = fs.openSync(path.join(state, "portal.log"), "w");
  const portal = spawn(path.join(root, "target/debug/radius-portal"), ["--config", config, "serve"], {
    cwd: root,
    env: { ...process.env, RUST_LOG: "info" },
    stdio: ["ignore", portalLog, portalLog],
  });
  const url = `http://127.0.0.1:${http}`;
  await waitFor("the portal to answer /healthz", 30_000, async () => {
    if (exited(portal)) throw new Error(`portal exited: ${fs.readFileSync(path.join(state, "portal.log"), "utf8")}`);
    try {
      return (await fetch(`${url}/healthz`)).ok;
    } catch {
      return false;
    }
  });
  process.env.PORTAL_URL = url;
  process.env.PORTAL_E2E_STATE = state;
  process.env.PORTAL_E2E_CONFIG = config;
  process.env.PORTAL_E2E_RADIUS_PORTS = `${strict},${acct}`;
  process.env.PORTAL_DYNAUTH_ADDR = `127.0.0.1:${dynauth}`;

  return async () => {
    portal.kill("SIGTERM");
    radius.kill("SIGTERM");
  };
}
