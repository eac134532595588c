// The same journeys with JavaScript disabled: plain form posts must work.
import { expect, test } from "@playwright/test";
import { logIn, url } from "./helpers";

test.use({ javaScriptEnabled: false });

test("without JavaScript, log in, refresh and disconnect work as form posts", async ({ page }) => {
  await page.goto(url("/"));
  await page.getByLabel("Username").fill("carol");
  await page.getByLabel("Password").fill("carol-pass");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(url("/session"));
  await expect(page.getByTestId("username")).toHaveText("carol");
  await expect(page.getByRole("timer")).toHaveText(/^[34]:\d\d:\d\d$/); // 4-hour default window
  // The end time as the server knows it, labelled (no script turns it into local time).
  await expect(page.getByTestId("ends")).toContainText(/Ends at (\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d UTC/);

  await page.getByRole("button", { name: "Refresh" }).click();
  await expect(page).toHaveURL(url("/session"));
  await expect(page.getByTestId("username")).toHaveText("carol");
  // The title says what the Refresh did, as its notice does (within 5 s of the sign-in it
  // changes nothing).
  const notice = (await page.getByTestId("notice").textContent()) ?? "";
  const what = notice.includes("changed nothing") ? "Refresh changed nothing" : "Refreshed";
  await expect(page).toHaveTitle(`${what} – Your session – End-to-End Org – Network access portal`);

  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page).toHaveURL(url("/"));
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
  await expect(page.getByRole("status")).toContainText("You are disconnected");
});

test("without JavaScript, a reload after the session ended says so and why", async ({ page }) => {
  await page.goto(url("/"));
  await page.getByLabel("Username").fill("gina"); // 2-second limit
  await page.getByLabel("Password").fill("gina-pass");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(url("/session"));
  await expect(async () => {
    await page.reload();
    await expect(page.getByTestId("ended")).toContainText("maximum length", { timeout: 500 });
  }).toPass({ timeout: 15_000 });
  await expect(page).toHaveURL(url("/session")); // no silent jump to the sign-in page
  await expect(page.getByRole("heading", { name: "Session ended" })).toBeVisible();
  await page.getByRole("link", { name: "Sign in again" }).click();
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
});

test("without JavaScript, a rejected login shows the message", async ({ page }) => {
  await page.goto(url("/"));
  await page.getByLabel("Username").fill("dave");
  await page.getByLabel("Password").fill("x");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("alert")).toHaveText("Sign-in refused: Account locked");
});

test("without JavaScript and without a Referer, a rejected login still shows the message", async ({ page }) => {
  await page.route("**/api/login", async (route) => {
    const headers = { ...route.request().headers() };
    delete headers["referer"];
    await route.continue({ headers });
  });
  await page.goto(url("/o/beta/"));
  await page.getByLabel("Username").fill("dave");
  await page.getByLabel("Password").fill("x");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(url("/o/beta/"));
  await expect(page.getByRole("alert")).toHaveText("Sign-in refused: Account locked");
  // Shown once: a reload is the plain page again.
  await page.reload();
  await expect(page.getByRole("alert")).toHaveCount(0);
});

test("a crafted link cannot put text in the portal's alert box", async ({ page }) => {
  const err = Buffer.from(JSON.stringify({ Rejected: { message: "Call 555-0100 to unlock" } })).toString("base64url");
  await page.goto(url(`/?__path=%2Fapi%2Flogin&__err=${err}`));
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
  await expect(page.getByText("555-0100")).toHaveCount(0);
  await expect(page.getByRole("alert")).toHaveCount(0);
});

test("without JavaScript, the session page's note is the one for no JavaScript, not that its script failed", async ({ page }) => {
  await logIn(page, "carol", "carol-pass");
  const shown = Date.now();
  await expect(page.getByRole("timer")).toBeVisible();
  // Past the 10 s after which a page whose script did not start says so.
  await expect.poll(() => Date.now() - shown, { timeout: 15_000 }).toBeGreaterThan(11_000);
  await expect(page.getByTestId("not-live")).toBeHidden();
});
