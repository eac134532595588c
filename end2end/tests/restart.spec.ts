// A portal killed (kill -9) and started again under an open session page: the page's island
// finds the restarted portal by itself (its live stream reconnects, or it polls) and shows what
// happens to the session afterwards — here the operator terminating it — without a reload.
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { expect, test } from "@playwright/test";
import { freeTcpPort } from "../ports";

const root = path.resolve(__dirname, "../..");
const binary = path.join(root, "target/debug/radius-portal");

async function healthy(url: string) {
  await expect
    .poll(
      async () => {
        try {
          return (await fetch(`${url}/healthz`)).ok;
        } catch {
          return false;
        }
      },
      { timeout: 30_000 },
    )
    .toBe(true);
}

test("the open page follows the portal through a kill -9 and restart", async ({ page }) => {
  const state = fs.mkdtempSync(path.join(os.tmpdir(), "portal-restart-"));
  const [strict, acct] = process.env.PORTAL_E2E_RADIUS_PORTS!.split(",");
  const port = await freeTcpPort();
  const config = path.join(state, "portal.toml");
  fs.writeFileSync(
    config,
    `[http]
listen = "127.0.0.1:${port}"
[database]
path = "${path.join(state, "portal.db")}"
[radius]
bind = "127.0.0.1"
[[organizations]]
id = "restart"
name = "Restart Org"
nas_identifier = "portal-e2e-restart"
[[organizations.servers]]
name = "freeradius"
address = "127.0.0.1"
auth_port = ${strict}
acct_port = ${acct}
secret = "testing123"
timeout = "1s"
`,
  );
  const log = fs.openSync(path.join(state, "portal.log"), "a");
  const start = (): ChildProcess =>
    spawn(binary, ["--config", config, "serve"], { cwd: root, stdio: ["ignore", log, log] });
  const url = `http://127.0.0.1:${port}`;
  let portal = start();
  try {
    await healthy(url);
    await page.goto(`${url}/`);
    await page.getByLabel("Username").fill("carol");
    await page.getByLabel("Password").fill("carol-pass");
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page).toHaveURL(`${url}/session`);
    await expect(page.getByTestId("ends")).not.toContainText("UTC"); // hydrated

    portal.kill("SIGKILL");
    await new Promise((r) => portal.once("exit", r));
    portal = start();
    await healthy(url);

    const out = execFileSync(binary, ["--config", config, "session", "list", "--json"], { cwd: root }).toString();
    const [session] = JSON.parse(out);
    execFileSync(binary, ["--config", config, "session", "terminate", String(session.id)], { cwd: root });
    await expect(page.getByTestId("ended")).toContainText("ended by the network operator", { timeout: 15_000 });
    await expect(page).toHaveURL(`${url}/session`);
  } finally {
    portal.kill("SIGTERM");
  }
});
