// The same journeys with JavaScript disabled: plain form posts must work.
import { expect, test } from "@playwright/test";
import { url } from "./helpers";

test.use({ javaScriptEnabled: false });

test("without JavaScript, log in, refresh and disconnect work as form posts", async ({ page }) => {
  await page.goto(url("/"));
  await page.getByLabel("Username").fill("carol");
  await page.getByLabel("Password").fill("carol-pass");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(url("/session"));
  await expect(page.getByTestId("username")).toHaveText("carol");
  await expect(page.getByRole("timer")).toHaveText(/^[34]:\d\d:\d\d$/); // 4-hour default window

  await page.getByRole("button", { name: "Refresh" }).click();
  // leptos_axum redirects back to the Referer with its error parameters stripped ("?" may remain).
  await expect(page).toHaveURL(new RegExp(`^${url("/session")}\\??$`));
  await expect(page.getByTestId("username")).toHaveText("carol");

  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page).toHaveURL(url("/"));
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
});

test("without JavaScript, a rejected login shows the message", async ({ page }) => {
  await page.goto(url("/"));
  await page.getByLabel("Username").fill("dave");
  await page.getByLabel("Password").fill("x");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("alert")).toHaveText("Sign-in refused: Account locked");
});
