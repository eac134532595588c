// User journeys with JavaScript: log in, watch the countdown tick, refresh, disconnect;
// a wrong password shows the server's message; a double click signs in once.
import * as fs from "node:fs";
import * as path from "node:path";
import { expect, test } from "@playwright/test";
import { portalCli, secondsLeft, submitLogin as logIn, url } from "./helpers";

test("log in, see the countdown tick, refresh moves the end time, disconnect", async ({ page }) => {
  const violations: string[] = [];
  page.on("console", (msg) => {
    if (msg.type() === "error") violations.push(msg.text());
  });

  await logIn(page, "bob", "bob-pass"); // 20-second window
  await expect(page).toHaveURL(url("/session"));
  await expect(page.getByRole("heading", { name: "You are connected" })).toBeVisible();
  await expect(page.getByTestId("username")).toHaveText("bob");

  const first = await secondsLeft(page);
  expect(first).toBeGreaterThan(15);
  // After hydration the countdown ticks in the browser: it drops by at least 2 seconds.
  await expect.poll(() => secondsLeft(page), { timeout: 15_000 }).toBeLessThanOrEqual(first - 2);

  const endsBefore = await page.getByTestId("ends").textContent();
  await page.getByRole("button", { name: "Refresh" }).click();
  await expect(page.getByTestId("ends")).not.toHaveText(endsBefore ?? "");
  await expect.poll(() => secondsLeft(page)).toBeGreaterThanOrEqual(first - 1);
  await expect(page).toHaveURL(url("/session")); // refreshed in place, no reload

  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page).toHaveURL(url("/"));
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
  // The sign-in page says the session ended, once.
  await expect(page.getByRole("status")).toContainText("You are disconnected");
  await expect(page).toHaveTitle("Disconnected – Sign in – Network access portal");
  await page.reload();
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
  await expect(page.getByTestId("notice")).toHaveCount(0);
  await expect(page).toHaveTitle("Sign in – Network access portal");
  expect(violations.filter((v) => v.includes("Content Security Policy"))).toEqual([]);
});

test("a rejected login shows the RADIUS server's Reply-Message", async ({ page }) => {
  await logIn(page, "dave", "wrong");
  await expect(page.getByRole("alert")).toHaveText("Sign-in refused: Account locked");
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
  // The name tried is filled in again, the cursor in the password; the page says it is the sign-in.
  await expect(page.getByLabel("Username")).toHaveValue("dave");
  await expect(page.getByLabel("Password")).toHaveValue("");
  await expect(page.getByLabel("Password")).toBeFocused();
  // The title says first that it failed, and the focused field points at the error (what a
  // screen reader reads when the page loads).
  await expect(page).toHaveTitle("Sign-in failed – Sign in – Network access portal");
  await expect(page.getByLabel("Password")).toHaveAttribute("aria-invalid", "true");
  await expect(page.getByLabel("Password")).toHaveAccessibleDescription(
    "Sign-in refused: Account locked",
  );
  // Only once: a reload is a fresh form.
  await page.reload();
  await expect(page.getByLabel("Username")).toHaveValue("");
  await expect(page.getByRole("alert")).toHaveCount(0);
  await expect(page).toHaveTitle("Sign in – Network access portal");
});

test("the login page downloads no WebAssembly", async ({ page }) => {
  const wasm: string[] = [];
  page.on("request", (r) => {
    if (r.url().endsWith(".wasm") || r.url().endsWith(".js")) wasm.push(r.url());
  });
  await page.goto(url("/"));
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
  expect(wasm).toEqual([]);
});

test("a double click on Sign in opens one session with one Access-Request", async ({ page }) => {
  // Two clicks as fast as a user's double click: Chromium sends the form twice and cancels the
  // first request (when the second click lands before the first answer). The first sign-in
  // runs to its end on the portal and the second is answered with its session.
  await page.goto(url("/"));
  await page.getByLabel("Username").fill("frank");
  await page.getByLabel("Password").fill("frank-pass");
  const box = (await page.getByRole("button", { name: "Sign in" }).boundingBox())!;
  const [x, y] = [box.x + box.width / 2, box.y + box.height / 2];
  await page.mouse.click(x, y);
  await page.mouse.click(x, y);

  await expect(page).toHaveURL(url("/session"));
  await expect(page.getByTestId("username")).toHaveText("frank");

  const authLog = fs.readFileSync(path.join(process.env.PORTAL_E2E_STATE!, "auth.log"), "utf8");
  expect(authLog.split("\n").filter((l) => l.includes("user=frank ")).length).toBe(1);
  const accepted = portalCli("audit", "tail", "--json", "--limit", "1000")
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line))
    .filter((e) => e.action === "login.accepted" && e.detail.username === "frank");
  expect(accepted.length).toBe(1);

  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page).toHaveURL(url("/"));
});

test.describe("in the user's time zone", () => {
  test.use({ timezoneId: "Asia/Kolkata" });

  test("the end time shows in local time from the first paint, before the WebAssembly runs", async ({ page }) => {
    // The end time the page's script was given, formatted here as the island formats it.
    const local = () =>
      page.evaluate(() => {
        const script = [...document.scripts].map((s) => s.textContent ?? "").find((t) => t.includes("toLocaleTimeString"));
        const d = new Date(Number(/new Date\((\d+)\)/.exec(script ?? "")?.[1]));
        return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString("default") : d.toLocaleString("default");
      });
    // The island's WebAssembly held back: what shows is the page's own doing.
    await page.route("**/*.wasm", (route) => route.abort());
    await logIn(page, "carol", "carol-pass");
    await expect(page).toHaveURL(url("/session"));
    const ends = page.getByTestId("ends");
    const expected = await local();
    expect(expected).not.toBe("Invalid Date");
    await expect(ends).toContainText(`Ends at ${expected} unless you refresh`);
    await expect(ends).not.toContainText("UTC");
    await expect(page.locator(".hydrated")).toHaveCount(0);
    // With the WebAssembly: hydrated, the same text (nothing changes as the island takes over).
    await page.unroute("**/*.wasm");
    await page.reload();
    await expect(page.locator(".hydrated")).toHaveCount(1);
    await expect(ends).toContainText(`Ends at ${await local()} unless you refresh`);
    await page.getByRole("button", { name: "Disconnect" }).click();
    await expect(page).toHaveURL(url("/"));
  });
});
