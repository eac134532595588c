// Two organizations on one portal: each has its own portal under /o/{slug}/; disabling one
// (with the operator CLI, on the running portal's database) ends its open session page in place
// and takes its sign-in form away, while the other keeps working.
import { expect, test } from "@playwright/test";
import * as fs from "node:fs";
import * as path from "node:path";
import { hydrated, logIn, portalCli, url } from "./helpers";

test.afterEach(async ({ request }) => {
  portalCli("org", "enable", "beta");
  // The running portal learns of a change made by another process within half a second (its
  // worker's poll): the next test starts once its beta page offers the form again.
  await expect
    .poll(async () => (await request.get(url("/o/beta/"))).text(), { timeout: 10_000 })
    .not.toContain("has been disabled");
});

test("each organization has its own portal under its slug", async ({ page }) => {
  await page.goto(url("/"));
  await expect(page.getByText("End-to-End Org")).toBeVisible();
  await page.goto(url("/o/beta/"));
  await expect(page.getByText("Beta Branch Office")).toBeVisible();
  // A name in another script reads in its own direction.
  await expect(page.getByTestId("organization")).toHaveAttribute("dir", "auto");
  // Its tabs say whose they are.
  await expect(page).toHaveTitle("Sign in – Beta Branch Office – Network access portal");
  const missing = await page.goto(url("/o/no-such-org/"));
  expect(missing?.status()).toBe(404);

  await logIn(page, "carol", "carol-pass", "/o/beta");
  await hydrated(page);
  await expect(page.getByRole("definition").filter({ hasText: "Beta Branch Office" })).toBeVisible();
  await expect(page).toHaveTitle("Your session – Beta Branch Office – Network access portal");
  // The default organization's portal has no session for this browser.
  await page.goto(url("/session"));
  await expect(page).toHaveURL(url("/"));
});

test("disabling an organization ends its open page in place and closes its form", async ({ page }) => {
  await logIn(page, "erin", "erin-pass", "/o/beta");
  await hydrated(page);
  expect(portalCli("org", "disable", "beta")).toContain("disabled");
  // Pushed by the live stream: well before its 15 s re-sync (a slow machine may need seconds).
  await expect(page.getByTestId("ended")).toContainText("who disabled this organization", { timeout: 8_000 });
  // The live panel offers no way back in while the organization stays disabled.
  await expect(page.getByTestId("ended").getByTestId("disabled")).toContainText("has been disabled");
  await expect(page.getByRole("link", { name: "Sign in again" })).toBeHidden();
  // The title the page gives itself when the session ends keeps naming the organization.
  await expect(page).toHaveTitle("Session ended – Beta Branch Office – Network access portal");

  const other = await page.context().newPage();
  await other.goto(url("/o/beta/"));
  await expect(other.getByTestId("disabled")).toContainText("has been disabled");
  await expect(other.getByRole("button", { name: "Sign in" })).toHaveCount(0);
  // The notice asks the user to contact someone: the organization's help line and contact
  // are there (black-box tester M's D3).
  await expect(other.getByTestId("help")).toContainText("it-help@beta.example");
  await expect(other).toHaveTitle("Sign-in not available – Beta Branch Office – Network access portal");
  await other.goto(url("/"));
  await expect(other.getByRole("button", { name: "Sign in" })).toBeVisible();
  // The session page loaded (not left open) while the organization is disabled says so too.
  await other.goto(url("/o/beta/session"));
  await expect(other.getByTestId("ended")).toContainText("who disabled this organization");
  await expect(other.getByTestId("ended").getByTestId("disabled")).toContainText("has been disabled");

  // And its sign-in page, loaded while disabled and left open.
  const signIn = await page.context().newPage();
  await signIn.goto(url("/o/beta/"));
  await expect(signIn.getByTestId("disabled")).toContainText("has been disabled");

  // Enabled again: the page left open and the pages loaded while disabled offer the sign-in
  // once more (each looks every 15 s).
  expect(portalCli("org", "enable", "beta")).toContain("enabled");
  for (const shown of [page, other]) {
    await expect(shown.getByRole("link", { name: "Sign in again" })).toBeVisible({ timeout: 25_000 });
    await expect(shown.getByTestId("ended").getByTestId("disabled")).toHaveCount(0);
  }
  await expect(signIn.getByRole("button", { name: "Sign in" })).toBeVisible({ timeout: 25_000 });
  await expect(signIn.getByTestId("disabled")).toHaveCount(0);
  await other.close();
  await signIn.close();
});

test("two organizations' branding side by side", async ({ page }) => {
  const buttonColour = () =>
    page.getByRole("button", { name: "Sign in" }).evaluate((b) => getComputedStyle(b).backgroundColor);

  await page.goto(url("/"));
  await expect(page.getByTestId("organization")).toHaveText("End-to-End Org");
  await expect(page.getByTestId("logo")).toHaveCount(0);
  await expect(page.getByTestId("help")).toHaveCount(0);
  const plain = await buttonColour();
  const shots = process.env.UPDATE_SCREENSHOTS ? path.join(__dirname, "../../docs/screenshots") : test.info().outputDir;
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, "login-default.png") });

  await page.goto(url("/o/beta/"));
  await expect(page.getByTestId("organization")).toHaveText("Beta Branch Office");
  const logo = page.getByTestId("logo");
  await expect(logo).toBeVisible();
  await expect.poll(() => logo.evaluate((img: HTMLImageElement) => img.naturalWidth)).toBeGreaterThan(0);
  await expect(page.getByTestId("help")).toContainText("front desk");
  await expect(page.getByTestId("help")).toContainText("it-help@beta.example");
  await expect.poll(buttonColour).toBe("rgb(15, 118, 110)");
  expect(plain).not.toBe("rgb(15, 118, 110)");
  await page.screenshot({ path: path.join(shots, "login-beta.png") });

  // The session page is the organization's too: its colour on Refresh, its help and contact.
  await page.getByLabel("Username").fill("carol");
  await page.getByLabel("Password").fill("carol-pass");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(url("/o/beta/session"));
  await expect
    .poll(() => page.getByRole("button", { name: "Refresh" }).evaluate((b) => getComputedStyle(b).backgroundColor))
    .toBe("rgb(15, 118, 110)");
  // Its bar across the top of the session's card, as on the sign-in page.
  await expect
    .poll(() => page.locator("section.brand-bar").evaluate((s) => getComputedStyle(s).borderTopColor))
    .toBe("rgb(15, 118, 110)");
  await expect(page.getByTestId("help")).toContainText("it-help@beta.example");
  // Its logo on top, as on its sign-in page.
  await expect(page.getByTestId("logo")).toBeVisible();
  await expect(page.getByTestId("logo")).toHaveAttribute("alt", "Beta Branch Office logo");
  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page).toHaveURL(url("/o/beta/"));
});
