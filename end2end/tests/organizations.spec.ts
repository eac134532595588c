// Two organizations on one portal: each has its own portal under /o/{slug}/; disabling one
// (with the operator CLI, on the running portal's database) ends its open session page in place
// and takes its sign-in form away, while the other keeps working.
import { expect, test } from "@playwright/test";
import { hydrated, logIn, portalCli, url } from "./helpers";

test.afterEach(() => {
  portalCli("org", "enable", "beta");
});

test("each organization has its own portal under its slug", async ({ page }) => {
  await page.goto(url("/"));
  await expect(page.getByText("End-to-End Org")).toBeVisible();
  await page.goto(url("/o/beta/"));
  await expect(page.getByText("Beta Branch Office")).toBeVisible();
  const missing = await page.goto(url("/o/no-such-org/"));
  expect(missing?.status()).toBe(404);

  await logIn(page, "carol", "carol-pass", "/o/beta");
  await hydrated(page);
  await expect(page.getByRole("definition").filter({ hasText: "Beta Branch Office" })).toBeVisible();
  // The default organization's portal has no session for this browser.
  await page.goto(url("/session"));
  await expect(page).toHaveURL(url("/"));
});

test("disabling an organization ends its open page in place and closes its form", async ({ page }) => {
  await logIn(page, "erin", "erin-pass", "/o/beta");
  await hydrated(page);
  expect(portalCli("org", "disable", "beta")).toContain("disabled");
  await expect(page.getByTestId("ended")).toContainText("ended by the network operator", { timeout: 2_000 });

  await page.goto(url("/o/beta/"));
  await expect(page.getByTestId("disabled")).toContainText("has been disabled");
  await expect(page.getByRole("button", { name: "Sign in" })).toHaveCount(0);
  await page.goto(url("/"));
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
});
