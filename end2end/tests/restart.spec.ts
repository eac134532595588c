// A portal killed (kill -9) and started again under an open session page: the page says the
// portal cannot be reached while it is away and stops saying so once it answers; its island
// finds the restarted portal by itself (its live stream reconnects, or it polls) and shows what
// happens to the session afterwards — here the operator terminating it — without a reload.
import { expect, test } from "@playwright/test";
import { ownPortal } from "../portal";

test("the open page follows the portal through a kill -9 and restart", async ({ page }) => {
  const portal = await ownPortal("restart", "Restart Org");
  const url = portal.url;
  try {
    await page.goto(`${url}/`);
    await page.getByLabel("Username").fill("carol");
    await page.getByLabel("Password").fill("carol-pass");
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page).toHaveURL(`${url}/session`);
    await expect(page.locator(".hydrated")).toHaveCount(1); // hydrated

    await portal.kill9();
    // Without the portal the page says so by itself (its polls fail), rather than counting
    // down as if all were well...
    const alert = page.locator("#form-error");
    await expect(alert).toContainText("could not be reached", { timeout: 15_000 });
    // ...and a Refresh made meanwhile fails the same way.
    await page.getByRole("button", { name: "Refresh" }).click();
    await expect(alert).toContainText("could not be reached");
    await portal.start();
    // The portal answers again (its stream, or a poll): the alert goes by itself.
    await expect(alert).toHaveCount(0, { timeout: 20_000 });

    const [session] = JSON.parse(portal.cli("session", "list", "--json"));
    portal.cli("session", "terminate", String(session.id));
    await expect(page.getByTestId("ended")).toContainText("ended by the network operator", { timeout: 15_000 });
    await expect(page).toHaveURL(`${url}/session`);
  } finally {
    portal.stop();
  }
});
