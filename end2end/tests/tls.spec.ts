// The portal serving HTTPS itself (built-in TLS, a self-signed certificate made for the test):
// the whole journey works in Chromium, with HSTS on every answer and the web-session cookie
// under the __Host- prefix, Secure.
import { expect, test } from "@playwright/test";
import { ownPortal } from "../portal";

test.use({ ignoreHTTPSErrors: true });

test("sign in, refresh and disconnect over the portal's own HTTPS", async ({ page, context }) => {
  const portal = await ownPortal("tls", "TLS Org", { tls: true });
  const url = portal.url;
  try {
    const first = await page.goto(`${url}/`);
    expect(first?.headers()["strict-transport-security"]).toBe("max-age=31536000");
    await page.getByLabel("Username").fill("carol");
    await page.getByLabel("Password").fill("carol-pass");
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page).toHaveURL(`${url}/session`);
    await expect(page.getByTestId("username")).toHaveText("carol");
    const cookies = await context.cookies(url);
    const session = cookies.find((c) => c.name === "__Host-portal_session");
    expect(session?.secure).toBe(true);
    expect(session?.httpOnly).toBe(true);
    expect(session?.sameSite).toBe("Strict");
    await page.getByRole("button", { name: "Refresh" }).click();
    await expect(page.getByTestId("ends")).toContainText("unless you refresh");

    await page.getByRole("button", { name: "Disconnect" }).click();
    await expect(page).toHaveURL(`${url}/`);
    await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
  } finally {
    portal.stop();
  }
});
