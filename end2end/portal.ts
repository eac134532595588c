// A portal of a test's own (its own database, organization and port) against the shared
// FreeRADIUS, for tests that restart it or serve it differently (HTTPS).
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as https from "node:https";
import * as os from "node:os";
import * as path from "node:path";
import { expect } from "@playwright/test";
import { organizationToml, portalToml } from "./config";
import { freeTcpPort } from "./ports";

export const root = path.resolve(__dirname, "..");
export const binary = path.join(root, "target/debug/radius-portal");

export interface OwnPortal {
  url: string;
  config: string;
  /** Starts (again) and waits until /healthz answers. */
  start(): Promise<void>;
  /** kill -9, waiting for the process to be gone. */
  kill9(): Promise<void>;
  stop(): void;
  cli(...args: string[]): string;
}

/** Answers /healthz (over HTTPS: whatever the certificate, it is the test's own). */
function healthz(url: string): Promise<boolean> {
  if (!url.startsWith("https:")) {
    return fetch(`${url}/healthz`).then(
      (r) => r.ok,
      () => false,
    );
  }
  return new Promise((resolve) => {
    https
      .get(`${url}/healthz`, { rejectUnauthorized: false }, (r) => {
        r.resume();
        resolve(r.statusCode === 200);
      })
      .on("error", () => resolve(false));
  });
}

export async function ownPortal(id: string, name: string, options: { tls?: boolean } = {}): Promise<OwnPortal> {
  const state = fs.mkdtempSync(path.join(os.tmpdir(), `portal-${id}-`));
  const [strict, acct] = process.env.PORTAL_E2E_RADIUS_PORTS!.split(",");
  const port = await freeTcpPort();
  let tls: { cert: string; key: string } | undefined;
  if (options.tls) {
    const cert = path.join(state, "portal.crt");
    const key = path.join(state, "portal.key");
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
      "-addext", "subjectAltName=IP:127.0.0.1",
    ], { stdio: "ignore" });
    tls = { cert, key };
  }
  const config = path.join(state, "portal.toml");
  fs.writeFileSync(config, portalToml(port, path.join(state, "portal.db"), tls) + organizationToml(id, name, strict, acct));
  const log = fs.openSync(path.join(state, "portal.log"), "a");
  const url = `${options.tls ? "https" : "http"}://127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  const portal: OwnPortal = {
    url,
    config,
    async start() {
      child = spawn(binary, ["--config", config, "serve"], { cwd: root, stdio: ["ignore", log, log] });
      await expect.poll(() => healthz(url), { timeout: 30_000 }).toBe(true);
    },
    async kill9() {
      const running = child;
      if (!running) return;
      running.kill("SIGKILL");
      await new Promise((r) => running.once("exit", r));
    },
    stop() {
      child?.kill("SIGTERM");
    },
    cli(...args: string[]) {
      return execFileSync(binary, ["--config", config, ...args], { cwd: root }).toString();
    },
  };
  await portal.start();
  return portal;
}
