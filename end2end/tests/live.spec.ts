// The session page tells the truth without a reload: the end of a session shows in place with
// its reason, a refresh in another tab moves this tab's countdown, a Disconnect-Request from the
// RADIUS server reaches the open page, the end time is in the browser's time zone, and the
// Accept's Reply-Message is shown.
import { execFileSync } from "node:child_process";
import { expect, test } from "@playwright/test";
import { hydrated, logIn, secondsLeft, url } from "./helpers";

test("when the countdown reaches 0 the page says the session ended, and why", async ({ page }) => {
  await logIn(page, "gina", "gina-pass"); // 2-second limit
  await expect(page.getByTestId("ended")).toBeVisible();
  await expect(page.getByTestId("ended")).toContainText("maximum length");
  await expect(page.getByRole("heading", { name: "Session ended" })).toBeVisible();
  await expect(page).toHaveURL(url("/session")); // no silent jump to the login page
});

test("a refresh in a second tab moves the first tab's countdown", async ({ context }) => {
  const first = await context.newPage();
  await logIn(first, "bob", "bob-pass"); // 20-second window
  await hydrated(first);
  const start = await secondsLeft(first);
  await expect.poll(() => secondsLeft(first), { timeout: 15_000 }).toBeLessThanOrEqual(start - 3);

  const second = await context.newPage();
  await second.goto(url("/session"));
  await hydrated(second);
  await second.getByRole("button", { name: "Refresh" }).click();

  await expect.poll(() => secondsLeft(first), { timeout: 5_000 }).toBeGreaterThanOrEqual(start - 1);
});

test("a Disconnect-Request from the RADIUS server ends the open page's session", async ({ page }) => {
  await logIn(page, "carol", "carol-pass");
  await hydrated(page);
  const out = execFileSync(
    "radclient",
    ["-x", "-t", "2", "-r", "1", process.env.PORTAL_DYNAUTH_ADDR!, "disconnect", "testing123"],
    { input: 'User-Name = "carol"\nFramed-IP-Address = 127.0.0.1\n' },
  ).toString();
  expect(out).toContain("Received Disconnect-ACK");
  // Pushed by the live stream: well before its 15 s re-sync (a slow machine may need seconds).
  await expect(page.getByTestId("ended")).toContainText("ended by the network operator", { timeout: 8_000 });
  // Said to screen readers (a live region that was there all along), focus on the heading
  // that says it (the controls are gone), and in the tab's title.
  await expect(page.getByRole("status")).toHaveText("It was ended by the network operator.");
  await expect(page.getByRole("heading", { name: "Session ended" })).toBeFocused();
  await expect(page).toHaveTitle("Session ended – End-to-End Org – Network access portal");
  // Once to a screen reader reading the page through, not twice (the live region, and not
  // the visible paragraph as well).
  const tree = await page.locator("body").ariaSnapshot();
  expect(tree.split("It was ended by the network operator.").length - 1, tree).toBe(1);
});

test("a page whose browser lost its cookie says the session runs on, not that it ended", async ({ page, context }) => {
  await logIn(page, "carol", "carol-pass");
  await hydrated(page);
  await context.clearCookies();
  await page.getByRole("button", { name: "Refresh" }).click();
  await expect(page.getByRole("heading", { name: "Not signed in" })).toBeVisible();
  await expect(page.getByTestId("ended")).toContainText("still running");
  await expect(page.getByTestId("ended")).not.toContainText("has ended");
  await expect(page).toHaveTitle("Not signed in – End-to-End Org – Network access portal");
});

test("this page's Refresh is said to screen readers, a refresh elsewhere is not", async ({ context }) => {
  const page = await context.newPage();
  await logIn(page, "carol", "carol-pass"); // the organization's 4-hour window
  await hydrated(page);
  await page.getByRole("button", { name: "Refresh" }).click();
  await expect(page.getByRole("status")).toContainText("Refreshed. Ends at");
  // On screen too, for those who see it.
  await expect(page.getByTestId("refreshed")).toBeVisible();
  await expect(page.getByTestId("refreshed")).toHaveText("Refreshed: your session now ends at the time shown on this page.");
  // Again at once: a refresh within 5 s of the last changes nothing, and the page says so (as
  // it does without JavaScript). The answer says which it was (a machine that stalled past the
  // 5 s made it a real one).
  const answer = page.waitForResponse((r) => r.url().includes("/api/refresh"));
  await page.getByRole("button", { name: "Refresh" }).click();
  const unchanged = (await (await answer).json()).refresh_changed_nothing === true;
  await expect(page.getByRole("status")).toContainText(
    unchanged ? "so this Refresh changed nothing. Ends at" : "Refreshed. Ends at",
  );
  await expect(page.getByTestId("refreshed")).toContainText(unchanged ? "changed nothing" : "Refreshed:");
  const refreshedAt = Date.now();
  const other = await context.newPage();
  await other.goto(url("/session"));
  await hydrated(other);
  // A refresh within 5 s of the last one changes nothing (README): the other page's refresh
  // must be a real one, which moves the first page's countdown.
  await expect.poll(() => Date.now() - refreshedAt, { timeout: 10_000 }).toBeGreaterThan(5_100);
  await other.getByRole("button", { name: "Refresh" }).click();
  await expect(other.getByRole("status")).toContainText("Refreshed. Ends at");
  // The first page follows the other's refresh, and does not claim it.
  await expect(page.getByRole("status")).toHaveText("");
  await expect(page.getByTestId("refreshed")).toBeHidden();
});

test("a Disconnect pressed while a Refresh is under way is not dropped: the session ends", async ({ page }) => {
  await logIn(page, "carol", "carol-pass");
  await hydrated(page);
  // The Refresh is held on its way until the Disconnect has been pressed (a slow link).
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  await page.route("**/api/refresh", async (route) => {
    await held;
    await route.continue().catch(() => {}); // the page may have gone on meanwhile
  });
  await page.getByRole("button", { name: "Refresh" }).click();
  await expect(page.getByRole("button", { name: "Refresh" })).toHaveAttribute("aria-disabled", "true");
  await page.getByRole("button", { name: "Disconnect" }).click();
  release();
  await expect(page).toHaveTitle("Disconnected – Sign in – End-to-End Org – Network access portal");
  await expect(page.getByTestId("notice")).toContainText("You are disconnected");
});

test("pages out of view let their streams go: six tabs leave a Disconnect room to go out", async ({ context }) => {
  const first = await context.newPage();
  await logIn(first, "carol", "carol-pass");
  await hydrated(first);
  // Five more tabs of the session, then put out of view (as tabs behind the one shown are):
  // over HTTP/1.1 a browser keeps six connections to a site, and six open streams would
  // leave the Disconnect queued behind them.
  for (let i = 0; i < 5; i++) {
    const tab = await context.newPage();
    await tab.goto(url("/session"));
    await hydrated(tab);
    await tab.evaluate(() => {
      Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
      document.dispatchEvent(new Event("visibilitychange")); // at the document, as a browser fires it
    });
  }
  await first.bringToFront();
  await first.getByRole("button", { name: "Disconnect" }).click();
  await expect(first).toHaveURL(url("/"), { timeout: 5_000 });
});

test("a page whose script comes late counts down from when the page came", async ({ page }) => {
  // A slow link: the WebAssembly comes 5 s after the page, the portal's answers later still.
  await page.route("**/pkg/*.wasm", async (route) => {
    await new Promise((resolve) => setTimeout(resolve, 5_000));
    await route.continue();
  });
  for (const path of ["**/api/session_status", "**/session/events*"]) {
    await page.route(path, async (route) => {
      await new Promise((resolve) => setTimeout(resolve, 15_000));
      await route.continue().catch(() => {});
    });
  }
  await logIn(page, "carol", "carol-pass");
  const shown = await secondsLeft(page);
  await hydrated(page);
  // Its first tick: the 5 s the script took are counted, not shown as time still left.
  await expect.poll(() => secondsLeft(page)).not.toBe(shown);
  expect(await secondsLeft(page)).toBeLessThanOrEqual(shown - 4);
});

test("seven pages in view make way for one's Disconnect: it goes out", async ({ context }) => {
  const first = await context.newPage();
  await logIn(first, "carol", "carol-pass");
  await hydrated(first);
  // Six more pages of the session (windows side by side), each put in view once all are
  // loaded: seven streams, and over HTTP/1.1 a browser keeps six connections to a site.
  await context.addInitScript(() => {
    const w = window as unknown as { inView: boolean };
    w.inView = false;
    Object.defineProperty(document, "hidden", { configurable: true, get: () => !w.inView });
  });
  const tabs = [];
  for (let i = 0; i < 6; i++) {
    const tab = await context.newPage();
    await tab.goto(url("/session"));
    await hydrated(tab);
    tabs.push(tab);
  }
  for (const tab of tabs) {
    await tab.evaluate(() => {
      (window as unknown as { inView: boolean }).inView = true;
      document.dispatchEvent(new Event("visibilitychange"));
    });
  }
  const last = tabs[tabs.length - 1];
  await last.bringToFront();
  await last.getByRole("button", { name: "Disconnect" }).click();
  await expect(last).toHaveURL(url("/"), { timeout: 10_000 });
  // The other pages learn it (polling while they make way, or their streams again).
  await expect(first.getByRole("heading", { name: "Session ended" })).toBeVisible({ timeout: 15_000 });
});

test("the Accept's Reply-Message is shown while the session runs, and a last-minute warning", async ({ page, context }) => {
  await logIn(page, "erin", "erin-pass");
  await expect(page.getByTestId("reply-message")).toHaveText("Welcome, erin");
  // A welcome belongs to a running session: it goes once the page says it is over for it.
  await hydrated(page);
  await context.clearCookies();
  await page.getByRole("button", { name: "Refresh" }).click();
  await expect(page.getByRole("heading", { name: "Not signed in" })).toBeVisible();
  await expect(page.getByTestId("reply-message")).toBeHidden();
  await logIn(page, "alice", "alice-pass"); // 30-second limit: inside the last minute at once
  await hydrated(page);
  await expect(page.getByTestId("warning")).toContainText("maximum length");
  // A refresh could not extend it: no Refresh button, Disconnect alone.
  await expect(page.getByRole("button", { name: "Refresh" })).toBeHidden();
  await expect(page.getByRole("button", { name: "Disconnect" })).toBeVisible();
});

test("at 0:00 with the portal out of reach the page no longer says connected", async ({ page }) => {
  // The page's questions to the portal go nowhere (as with the network gone): the end of the
  // countdown cannot be confirmed, and the page says the time is up rather than "connected".
  test.setTimeout(60_000);
  await page.route("**/api/session_status", (route) => route.abort());
  await page.route("**/session/events*", (route) => route.abort());
  // A 20-second window: the page is shown well before it runs out, however slow the machine.
  await logIn(page, "bob", "bob-pass");
  await expect(page.getByRole("heading", { name: "You are connected" })).toBeVisible();
  await expect(page.getByRole("heading", { name: "Your time is up" })).toBeVisible({ timeout: 40_000 });
  await expect(page.getByText("You are connected")).toHaveCount(0);
  // Nothing on it speaks of the end as still to come.
  await expect(page.getByTestId("warning")).toHaveCount(0);
  await expect(page.getByTestId("ends")).toContainText("has passed");
  // A refresh cannot bring it back: no Refresh; Disconnect stays (it may still run).
  await expect(page.getByRole("button", { name: "Refresh" })).toBeHidden();
  await expect(page.getByRole("button", { name: "Disconnect" })).toBeVisible();
  // Said to screen readers as it happens.
  await expect(page.getByRole("status")).toContainText("Your time is up.");
});

test("a Refresh that reaches the limit takes its button away and leaves focus on Disconnect", async ({ page }) => {
  test.setTimeout(60_000);
  await logIn(page, "mona", "mona-pass"); // a 20-second window within a 30-second limit
  await hydrated(page);
  await expect(page.getByTestId("ends")).toContainText("A refresh gives you 20 seconds again.");
  // Past 10 s, a refresh's new window would run past the limit: the page no longer promises it.
  await expect.poll(() => secondsLeft(page), { timeout: 25_000 }).toBeLessThanOrEqual(9);
  await expect(page.getByTestId("ends")).toContainText("A refresh extends it only up to its maximum length.");
  const refresh = page.getByRole("button", { name: "Refresh" });
  await refresh.focus();
  await page.keyboard.press("Enter");
  await expect(page.getByTestId("ends")).toContainText("maximum session length");
  await expect(refresh).toBeHidden();
  await expect(page.getByRole("button", { name: "Disconnect" })).toBeFocused();
  // Its script runs: past the 10 s after which a page whose script never started says so,
  // this one says nothing of the kind.
  await expect(page.getByTestId("not-live")).toBeHidden();
});

test("a session page whose script never starts says so, rather than a countdown standing still", async ({ page }) => {
  await page.route("**/pkg/*.wasm", (route) => route.abort());
  await logIn(page, "carol", "carol-pass");
  await expect(page.getByTestId("not-live")).toBeVisible({ timeout: 20_000 });
  await expect(page.getByTestId("not-live")).toContainText("reload the page");
  await expect(page.locator(".hydrated")).toHaveCount(0);
});

test("a Refresh the portal never answers (a link gone silent) says the portal could not be reached", async ({ page }) => {
  await logIn(page, "carol", "carol-pass");
  await hydrated(page);
  // The link goes silent: the request leaves and nothing comes back, nor any error.
  await page.route("**/api/refresh", () => {});
  await page.getByRole("button", { name: "Refresh" }).click();
  await expect(page.getByRole("alert")).toContainText("could not be reached", { timeout: 20_000 });
  // The button is usable again: the user can try once the link is back.
  await page.unroute("**/api/refresh");
  await expect(page.getByRole("button", { name: "Refresh" })).not.toHaveAttribute("aria-disabled", "true");
  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page).toHaveURL(url("/"));
});

test("a Disconnect that does not reach the portal says the session runs on, until the user acts", async ({ page }) => {
  await logIn(page, "carol", "carol-pass");
  await hydrated(page);
  await page.route("**/api/disconnect", (route) => route.abort());
  await page.getByRole("button", { name: "Disconnect" }).click();
  const alert = page.getByRole("alert");
  await expect(alert).toContainText("Your Disconnect could not be confirmed");
  await expect(alert).toContainText("your session may still be running");
  // Back online and the portal answering: still said, since the session (and its network
  // access) runs on — not cleared like "could not be reached".
  const answered = page.waitForResponse("**/api/session_status");
  await page.evaluate(() => window.dispatchEvent(new Event("online")));
  await answered;
  await expect(page.getByRole("heading", { name: "You are connected" })).toBeVisible();
  await expect(alert).toContainText("your session may still be running");
  // Pressed again with the link back: disconnected.
  await page.unroute("**/api/disconnect");
  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page).toHaveURL(url("/"));
});

test("a page whose portal is out of reach asks less and less often, and follows it again once back", async ({ page }) => {
  // The page's clock is Playwright's: the waits are read in the page's own time, which the test
  // moves, so a slow machine changes nothing. Every question the page asks is noted with the
  // page's time, and every stream it opens is kept; a refused question's end is counted (the
  // page's own handling of it runs right after, before the test moves the clock again).
  await page.clock.install();
  await page.addInitScript(() => {
    const w = window as any;
    w.__asked = [] as number[];
    w.__settled = 0;
    w.__streams = [] as EventSource[];
    const fetch = window.fetch.bind(window);
    window.fetch = (input: RequestInfo | URL, init?: RequestInit) => {
      const answer = fetch(input, init);
      if (String(input).includes("/api/session_status")) {
        w.__asked.push(Date.now());
        answer.finally(() => w.__settled++).catch(() => {});
      }
      return answer;
    };
    const Source = window.EventSource;
    w.EventSource = class extends Source {
      constructor(u: string | URL, init?: EventSourceInit) {
        super(u, init);
        w.__streams.push(this);
      }
    };
  });
  await logIn(page, "carol", "carol-pass"); // the organization's 4-hour window
  await hydrated(page);
  const asked = () => page.evaluate(() => (window as any).__asked as number[]);
  const streams = () => page.evaluate(() => ((window as any).__streams as EventSource[]).map((s) => s.readyState));
  const settled = () => page.evaluate(() => (window as any).__settled === (window as any).__asked.length);
  // Moves the page's time on by `ms`, a second at a time, each step once the questions it
  // started have ended.
  const advance = async (ms: number) => {
    for (let done = 0; done < ms; done += 1_000) {
      await page.clock.runFor(1_000);
      await expect.poll(settled).toBe(true);
    }
  };
  await page.clock.pauseAt(Date.now() + 60_000);
  await expect.poll(settled).toBe(true);
  // The portal goes out of reach: the page's questions and streams fail from now on.
  await page.route("**/api/session_status", (route) => route.abort());
  await page.route("**/session/events*", (route) => route.abort());
  // The open stream goes with it (the page put out of view and back: it lets its stream go,
  // then opens another and asks).
  await page.evaluate(() => {
    const hide = (hidden: boolean) => {
      Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
      document.dispatchEvent(new Event("visibilitychange")); // at the document, as a browser fires it
    };
    hide(true);
    hide(false);
  });
  await expect(page.getByRole("alert")).toContainText("could not be reached");
  const before = (await asked()).length;
  const opened = (await streams()).length;
  await advance(45_000);
  // Shown again, the page asked at once, unanswered. From there each unanswered question
  // doubles the wait of its 2 s polling: 4, 8, then 16 s, and no longer. The page's timer
  // ticks every 250 ms: a wait ends at the first tick after it.
  const times = (await asked()).slice(before - 1);
  const gaps = times.slice(1).map((at, i) => at - times[i]);
  expect(gaps.length).toBe(4);
  [4_000, 8_000, 16_000, 16_000].forEach((wait, i) => {
    expect(gaps[i]).toBeGreaterThanOrEqual(wait);
    expect(gaps[i]).toBeLessThanOrEqual(wait + 250);
  });
  // Meanwhile no stream was opened, and the one that failed was closed by the page (the
  // browser's own reconnecting would leave it connecting, trying again every few seconds).
  const states = await streams();
  expect(states.length).toBe(opened);
  expect(new Set(states)).toEqual(new Set([2])); // EventSource.CLOSED
  // Back: once answered (the user comes back to the window: it asks), the page says nothing of
  // it any more and opens its stream again. The page's time runs on from here: the answer's
  // body is read after its headers, and the page opens its stream at a tick after that.
  await page.unroute("**/api/session_status");
  await page.unroute("**/session/events*");
  await page.evaluate(() => window.dispatchEvent(new Event("focus")));
  await page.clock.resume();
  await expect(page.getByRole("alert")).toHaveCount(0);
  await expect.poll(async () => (await streams()).at(-1)).toBe(1); // EventSource.OPEN
  await expect(page.getByRole("heading", { name: "You are connected" })).toBeVisible();
});

test("a Refresh's notice from before the page's script ran goes once the session ends", async ({ page, context }) => {
  await logIn(page, "carol", "carol-pass");
  await hydrated(page);
  // A Refresh sent as a plain form post (pressed before the script ran): the server's notice.
  await page.evaluate(() =>
    (document.querySelector('form[action$="/api/refresh"]') as HTMLFormElement).submit(),
  );
  await expect(page.getByTestId("notice")).toContainText("Refreshed");
  await hydrated(page);
  // A Refresh of the page's own then: its notice replaces the server's (not two).
  await page.getByRole("button", { name: "Refresh" }).click();
  await expect(page.getByTestId("refreshed")).toBeVisible();
  await expect(page.getByTestId("notice")).toBeHidden();
  // Disconnected from another tab: the page says so in place, and the notice of an end time
  // no longer shown goes.
  const other = await context.newPage();
  await other.goto(url("/session"));
  await hydrated(other);
  await other.getByRole("button", { name: "Disconnect" }).click();
  await expect(page.getByTestId("ended")).toContainText("disconnected");
  await expect(page.getByTestId("notice")).toBeHidden();
});

test("a browser gone offline says at once that the portal cannot be reached, and recovers when back online", async ({ page, context }) => {
  await logIn(page, "bob", "bob-pass"); // 20-second window
  await hydrated(page);
  await expect(page.getByRole("alert")).toHaveCount(0);
  await context.setOffline(true);
  // Said on the browser's own word, not after the stream's 20 s of silence.
  await expect(page.getByRole("alert")).toContainText("could not be reached", { timeout: 5_000 });
  await context.setOffline(false);
  await expect(page.getByRole("alert")).toHaveCount(0, { timeout: 10_000 });
  await expect(page.getByRole("heading", { name: "You are connected" })).toBeVisible();
  await page.getByRole("button", { name: "Disconnect" }).click();
  await expect(page).toHaveURL(url("/"));
});

test("a page whose script comes after the last minute began hydrates and says the end", async ({ page }) => {
  // The script comes 3 s after the page, whose session (a 2-second limit) is over by then: the
  // island's first rendering must be the server's (its warning, "You are connected"), or
  // hydration stops where they differ and the page's controls and messages stay dead.
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.route("**/pkg/*.wasm", async (route) => {
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    await route.continue();
  });
  await logIn(page, "gina", "gina-pass");
  await hydrated(page);
  await expect(page.getByTestId("ended")).toContainText("maximum length");
  await expect(page.getByRole("heading", { name: "Session ended" })).toBeVisible();
  // A rendering that differed stops hydration with an error ("unreachable" in a release
  // build): none.
  expect(errors).toEqual([]);
});

test("a page whose session ended shows the browser's next session when looked at, not its time under this one's name", async ({ context }) => {
  const first = await context.newPage();
  await logIn(first, "carol", "carol-pass");
  await hydrated(first);
  // Disconnected in a second tab, which then signs in under another name.
  const second = await context.newPage();
  await second.goto(url("/session"));
  await second.getByRole("button", { name: "Disconnect" }).click();
  await expect(second).toHaveURL(url("/"));
  await expect(first.getByTestId("ended")).toContainText("disconnected");
  await logIn(second, "bob", "bob-pass");
  // Looked at again: bob's page, not bob's countdown under carol's name and address (with
  // forms of a token from before bob's sign-in).
  await first.bringToFront();
  await first.evaluate(() => window.dispatchEvent(new Event("focus")));
  await expect(first.getByTestId("username")).toHaveText("bob");
  await hydrated(first);
  await expect(first.getByRole("heading", { name: "You are connected" })).toBeVisible();
  await first.getByRole("button", { name: "Disconnect" }).click();
  await expect(first).toHaveURL(url("/"));
});
