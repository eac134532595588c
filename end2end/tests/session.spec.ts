// User journeys with JavaScript: log in, watch the countdown tick, refresh, disconnect;
// a wrong password shows the server's message; a double click signs in once.
import * as fs from "node:fs";
import * as path from "node:path";
import { expect, Page, test } from "@playwright/test";
import { hydrated, portalCli, secondsLeft, submitLogin as logIn, url } from "./helpers";

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
  await expect(page).toHaveTitle("Disconnected – Sign in – End-to-End Org – Network access portal");
  await page.reload();
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
  await expect(page.getByTestId("notice")).toHaveCount(0);
  await expect(page).toHaveTitle("Sign in – End-to-End Org – Network access portal");
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
  await expect(page).toHaveTitle("Sign-in failed – Sign in – End-to-End Org – Network access portal");
  await expect(page.getByLabel("Password")).toHaveAttribute("aria-invalid", "true");
  await expect(page.getByLabel("Password")).toHaveAccessibleDescription(
    "Sign-in refused: Account locked",
  );
  // Only once: a reload is a fresh form.
  await page.reload();
  await expect(page.getByLabel("Username")).toHaveValue("");
  await expect(page.getByRole("alert")).toHaveCount(0);
  await expect(page).toHaveTitle("Sign in – End-to-End Org – Network access portal");
});

test("a name pasted far too long is refused in the form, not by a bare refusal page", async ({ page }) => {
  await page.goto(url("/"));
  await page.getByLabel("Username").fill("x".repeat(20_000));
  await page.getByLabel("Password").fill("p");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("alert")).toContainText("Username is too long");
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
});

test("a sign-in under way says so on its button", async ({ page }) => {
  const blocked: string[] = [];
  page.on("console", (m) => {
    if (m.text().includes("Content Security Policy")) blocked.push(m.text());
  });
  // What the button said as the form went (a listener after the page's own, kept across the
  // navigation: the page cannot be read while its navigation is under way).
  await page.addInitScript(() => {
    document.addEventListener("submit", (event) => {
      const form = event.target as HTMLFormElement;
      const button = form.querySelector("button[type=submit]");
      sessionStorage.setItem("said", `${button?.textContent}|${form.getAttribute("aria-busy")}`);
    });
  });
  await page.goto(url("/"));
  await page.getByLabel("Username").fill("carol");
  await page.getByLabel("Password").fill("carol-pass");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(url("/session"));
  expect(await page.evaluate(() => sessionStorage.getItem("said"))).toBe("Signing in…|true");
  expect(blocked).toEqual([]);
  await page.goto(url("/session"));
  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page).toHaveURL(url("/"));
});

test("a sign-in stopped with Escape gives the button its label back", async ({ page }) => {
  await page.goto(url("/"));
  // The form's submit event as a sign-in under way sees it, without its navigation (a page
  // cannot be read while one is pending): the browser's stop leaves the page as it is then.
  const button = page.getByRole("button", { name: /Sign in|Signing in/ });
  await page.locator("form").evaluate((form) =>
    form.dispatchEvent(new Event("submit", { bubbles: true, cancelable: true })),
  );
  await expect(button).toHaveText("Signing in…");
  await expect(page.locator("form[aria-busy=true]")).toHaveCount(1);
  await page.keyboard.press("Escape");
  await expect(button).toHaveText("Sign in");
  await expect(page.locator("form[aria-busy]")).toHaveCount(0);
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

test("on a phone every control of the sign-in page is a tap target of 40 px or more", async ({ page }) => {
  await page.setViewportSize({ width: 320, height: 568 });
  await page.goto(url("/"));
  for (const control of [
    page.getByLabel("Username"),
    page.getByLabel("Password"),
    page.getByRole("button", { name: "Sign in" }),
    // The way back to a running session (black-box tester U's D8: 16 px high).
    page.getByRole("link", { name: "See your session" }),
  ]) {
    const box = (await control.boundingBox())!;
    expect(box.height, await control.evaluate((e) => e.outerHTML)).toBeGreaterThanOrEqual(40);
  }
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

/** The end time the page's script was given, as the page should show it: in English with
 * `english` (the English on the clock of the browser's language), in Asia/Kolkata, with its
 * date (the month by name) when that is not today there — worked out here, not by the page. */
async function expectedEnd(page: Page, english: string): Promise<string> {
  const script = await page.evaluate(() =>
    [...document.scripts].map((s) => s.textContent ?? "").find((t) => t.includes("portalEndTime")),
  );
  return formatted(Number(/\((\d{12,})\)/.exec(script ?? "")?.[1]), english);
}

/** `ms` as the page should show it (see `expectedEnd`), its spaces as one. */
function formatted(ms: number, english: string): string {
  const end = new Date(ms);
  const timeZone = "Asia/Kolkata";
  const day = (d: Date) => d.toLocaleDateString("en-US", { timeZone });
  const date = { dateStyle: "medium", timeStyle: "medium" } as const;
  const text =
    day(end) === day(new Date())
      ? end.toLocaleTimeString(english, { timeZone })
      : end.toLocaleString(english, { ...date, timeZone });
  return text.replace(/\s+/g, " ");
}

/** The page's formatter's text for an end two days from now (the date shown with it), as the
 * page should show it. */
async function twoDaysOn(page: Page, english: string): Promise<[string, string]> {
  const at = Date.now() + 2 * 86_400_000;
  const shown = await page.evaluate((ms) => (window as any).portalEndTime(ms) as string, at);
  return [shown.replace(/\s+/g, " "), formatted(at, english)];
}

/** The end time paragraph's text, its spaces as one (ICU's narrow no-break space included). */
async function endsText(page: Page): Promise<string> {
  return ((await page.getByTestId("ends").textContent()) ?? "").replace(/\s+/g, " ");
}

test.describe("in the user's time zone and language", () => {
  test.use({ timezoneId: "Asia/Kolkata", locale: "ar-EG" });

  test("the end time shows in local time from the first paint, before the WebAssembly runs, in the page's language", async ({ page }) => {
    // The island's WebAssembly held back: what shows is the page's own doing.
    await page.route("**/*.wasm", (route) => route.abort());
    await logIn(page, "carol", "carol-pass");
    await expect(page).toHaveURL(url("/session"));
    // English, as the sentence around it (an Arabic browser's own format would put
    // Arabic-Indic digits and a right-to-left "م" into it), with the browser's 12-hour clock.
    const expected = await expectedEnd(page, "en-US");
    expect(expected).toMatch(/^([A-Z][a-z]{2,3} \d{1,2}, \d{4}, )?\d{1,2}:\d{2}:\d{2} [AP]M$/);
    expect(await endsText(page)).toContain(`Ends at ${expected} unless you refresh`);
    await expect(page.locator(".hydrated")).toHaveCount(0);
    // With the WebAssembly: hydrated, the same text (nothing changes as the island takes over).
    await page.unroute("**/*.wasm");
    await page.reload();
    await expect(page.locator(".hydrated")).toHaveCount(1);
    expect(await endsText(page)).toContain(`Ends at ${await expectedEnd(page, "en-US")} unless you refresh`);
    // The island's own Refresh shows its new end time the same way (past the 5 s in which a
    // Refresh changes nothing).
    const before = await endsText(page);
    const start = await secondsLeft(page);
    await expect.poll(() => secondsLeft(page), { timeout: 20_000 }).toBeLessThanOrEqual(start - 6);
    await page.getByRole("button", { name: "Refresh" }).click();
    await expect(page.getByRole("status").filter({ hasText: "Refreshed." })).toHaveCount(1);
    await expect.poll(() => endsText(page)).not.toBe(before);
    await expect.poll(() => endsText(page)).toMatch(/Ends at ([A-Z][a-z]{2,3} \d{1,2}, \d{4}, )?\d{1,2}:\d{2}:\d{2} [AP]M unless you refresh/);
    expect(await endsText(page)).not.toMatch(/[\u0660-\u0669]|UTC/);
    // An end on another day has its date, the month by name.
    const [shown, expectedLater] = await twoDaysOn(page, "en-US");
    expect(shown).toBe(expectedLater);
    expect(shown).toMatch(/^[A-Z][a-z]{2,3} \d{1,2}, \d{4}, \d{1,2}:\d{2}:\d{2} [AP]M$/);
    await page.getByRole("button", { name: "Disconnect" }).click();
    await expect(page).toHaveURL(url("/"));
  });
});

test.describe("in a language with a 24-hour clock", () => {
  test.use({ timezoneId: "Asia/Kolkata", locale: "de-DE" });

  test("the end time shows in English on the browser's 24-hour clock", async ({ page }) => {
    await logIn(page, "carol", "carol-pass");
    await hydrated(page);
    const expected = await expectedEnd(page, "en-GB");
    expect(expected).toMatch(/^(\d{1,2} [A-Z][a-z]{2,3} \d{4}, )?\d{2}:\d{2}:\d{2}$/);
    expect(await endsText(page)).toContain(`Ends at ${expected} unless you refresh`);
    const [shown, expectedLater] = await twoDaysOn(page, "en-GB");
    expect(shown).toBe(expectedLater);
    expect(shown).toMatch(/^\d{1,2} [A-Z][a-z]{2,3} \d{4}, \d{2}:\d{2}:\d{2}$/);
    await page.getByRole("button", { name: "Disconnect" }).click();
    await expect(page).toHaveURL(url("/"));
  });
});

test.describe("in English that asks for other digits", () => {
  test.use({ timezoneId: "Asia/Kolkata", locale: "en-US-u-nu-arab" });

  test("the end time keeps the page's digits", async ({ page }) => {
    await logIn(page, "carol", "carol-pass");
    await hydrated(page);
    expect(await endsText(page)).toContain(`Ends at ${await expectedEnd(page, "en-US")} unless you refresh`);
    expect(await endsText(page)).not.toMatch(/[\u0660-\u0669]/);
    await page.getByRole("button", { name: "Disconnect" }).click();
    await expect(page).toHaveURL(url("/"));
  });
});
