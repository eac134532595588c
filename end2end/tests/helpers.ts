// Shared by the specs: the portal's address, the countdown reader, the sign-in journey.
import { execFileSync } from "node:child_process";
import * as path from "node:path";
import { expect, Page } from "@playwright/test";

export const url = (p: string) => `${process.env.PORTAL_URL}${p}`;

/** Seconds shown by the countdown ("MM:SS", "H:MM:SS" or "Dd H:MM:SS"). */
export async function secondsLeft(page: Page): Promise<number> {
  const text = ((await page.getByRole("timer").textContent()) ?? "").trim();
  const [days, clock] = text.includes("d ") ? text.split("d ") : ["0", text];
  const seconds = clock
    .split(":")
    .map(Number)
    .reduce((acc, n) => acc * 60 + n, 0);
  return Number(days) * 86_400 + seconds;
}

/** Fills and submits the sign-in form of the portal at `base` ("" or "/o/{slug}"). */
export async function submitLogin(page: Page, username: string, password: string, base = "") {
  await page.goto(url(`${base}/`));
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
}

/** Signs in and waits for the session page. */
export async function logIn(page: Page, username: string, password: string, base = "") {
  await submitLogin(page, username, password, base);
  await expect(page).toHaveURL(url(`${base}/session`));
}

/** Waits until the island is hydrated (its WASM runs: it marks its root). */
export async function hydrated(page: Page) {
  await expect(page.locator(".hydrated")).toHaveCount(1);
}

/** Runs the portal binary's operator CLI on the running portal's configuration. */
export function portalCli(...args: string[]): string {
  const root = path.resolve(__dirname, "../..");
  return execFileSync(path.join(root, "target/debug/radius-portal"), ["--config", process.env.PORTAL_E2E_CONFIG!, ...args], {
    cwd: root,
  }).toString();
}
