// Every text the pages show reads, in the light colour scheme and in the dark one a device may
// prefer: WCAG 2's 4.5:1 against what it is drawn on (3:1 for large text), for the sign-in page,
// its error and notices, an organization's branded pages (its accent as links) and the session
// page with its notices. The dark scheme is dark: light text on a dark page.
import * as fs from "node:fs";
import * as path from "node:path";
import { expect, Page, test } from "@playwright/test";
import { hydrated, logIn, submitLogin, url } from "./helpers";

type Failure = { text: string; colour: string; background: string; ratio: number };

/** The page's visible texts that read below WCAG's minimum, and the page's own two colours. */
async function unreadable(page: Page): Promise<{ failures: Failure[]; page: number[]; text: number[] }> {
  return page.evaluate(() => {
    const ctx = document.createElement("canvas").getContext("2d", { willReadFrequently: true })!;
    // Any CSS colour (rgb(), lab(), …) as sRGB channels and alpha, as the browser draws it.
    const rgba = (css: string): number[] => {
      ctx.clearRect(0, 0, 1, 1);
      ctx.fillStyle = "#000";
      ctx.fillStyle = css;
      ctx.fillRect(0, 0, 1, 1);
      const d = ctx.getImageData(0, 0, 1, 1).data;
      return [d[0], d[1], d[2], d[3] / 255];
    };
    const luminance = ([r, g, b]: number[]) => {
      const f = (c: number) => {
        c /= 255;
        return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
      };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const contrast = (a: number[], b: number[]) => {
      const [la, lb] = [luminance(a), luminance(b)];
      return (Math.max(la, lb) + 0.05) / (Math.min(la, lb) + 0.05);
    };
    // What an element is drawn on: the first background behind it that is not transparent,
    // else the browser's white canvas (a page that leaves it to the browser in the dark scheme
    // fails: it should say its colours).
    const background = (el: Element | null): number[] => {
      for (; el; el = el.parentElement) {
        const colour = rgba(getComputedStyle(el).backgroundColor);
        if (colour[3] > 0) return colour;
      }
      return [255, 255, 255, 1];
    };
    const failures: Failure[] = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const el = node.parentElement;
      const text = (node.textContent ?? "").trim();
      if (!el || !text || el.closest("script, style, noscript")) continue;
      const style = getComputedStyle(el);
      if (!el.checkVisibility({ visibilityProperty: true }) || style.visibility !== "visible") continue;
      // A disabled control may read less (WCAG's exception).
      if (el.closest('[aria-disabled="true"], :disabled')) continue;
      const size = parseFloat(style.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
      const [colour, behind] = [rgba(style.color), background(el)];
      const ratio = contrast(colour, behind);
      if (ratio < (large ? 3 : 4.5)) {
        failures.push({ text: text.slice(0, 40), colour: style.color, background: String(behind), ratio });
      }
    }
    return { failures, page: background(document.body), text: rgba(getComputedStyle(document.body).color) };
  });
}

/** The page reads, and is in `scheme`'s colours. */
async function readsIn(page: Page, scheme: "light" | "dark") {
  const found = await unreadable(page);
  expect(found.failures, page.url()).toEqual([]);
  const [pageLight, textLight] = [found.page, found.text].map(([r, g, b]) => r + g + b > 3 * 128);
  expect({ pageLight, textLight }, `${scheme} scheme on ${page.url()}`).toEqual(
    scheme === "light" ? { pageLight: true, textLight: false } : { pageLight: false, textLight: true },
  );
}

for (const scheme of ["light", "dark"] as const) {
  test.describe(`the ${scheme} colour scheme`, () => {
    test.use({ colorScheme: scheme });

    test(`the sign-in page, its error and its notice read (${scheme})`, async ({ page }) => {
      await page.goto(url("/"));
      await readsIn(page, scheme);
      await submitLogin(page, "dave", "wrong");
      await expect(page.getByRole("alert")).toHaveText("Sign-in refused: Account locked");
      await readsIn(page, scheme);

      // The session page with its last-minute warning (bob's window is 20 s), then the
      // sign-in page's notice that it ended.
      await logIn(page, "bob", "bob-pass");
      await hydrated(page);
      await expect(page.getByTestId("warning")).toBeVisible();
      await readsIn(page, scheme);
      await page.getByRole("button", { name: "Disconnect" }).click();
      await expect(page.getByRole("status")).toContainText("You are disconnected");
      await readsIn(page, scheme);

      const missing = await page.goto(url("/o/no-such-org/"));
      expect(missing?.status()).toBe(404);
      await readsIn(page, scheme);

      // The portal's own refusal page (its inline style), here for a form posted from
      // another site.
      await page.goto("about:blank");
      await page.setContent(`<form method="post" action="${url("/api/login")}"><input name="username" value="x"></form>`);
      await page.locator("form").evaluate((form: HTMLFormElement) => form.submit());
      await expect(page.getByRole("heading", { name: "Your request was refused" })).toBeVisible();
      await readsIn(page, scheme);
    });

    test(`an organization's branded pages read (${scheme})`, async ({ page }) => {
      // Its sign-in page: the logo, the help line, the accent as a link ("See your session").
      await page.goto(url("/o/beta/"));
      await expect(page.getByTestId("logo")).toBeVisible();
      await expect(page.getByRole("link", { name: "See your session" })).toBeVisible();
      await readsIn(page, scheme);

      // erin's Accept carries a Reply-Message; a Refresh shows its notice.
      await logIn(page, "erin", "erin-pass", "/o/beta");
      await hydrated(page);
      await expect(page.getByTestId("reply-message")).toHaveText("Welcome, erin");
      await page.getByRole("button", { name: "Refresh" }).click();
      await expect(page.getByTestId("refreshed")).toBeVisible();
      await readsIn(page, scheme);
      if (scheme === "dark") {
        // README's picture of the dark scheme (`UPDATE_SCREENSHOTS=1` writes it to docs/).
        const shots = process.env.UPDATE_SCREENSHOTS ? path.join(__dirname, "../../docs/screenshots") : test.info().outputDir;
        fs.mkdirSync(shots, { recursive: true });
        await page.screenshot({ path: path.join(shots, "session-beta-dark.png"), fullPage: true });
      }
      await page.getByRole("button", { name: "Disconnect" }).click();
      await expect(page).toHaveURL(url("/o/beta/"));
    });
  });
}
