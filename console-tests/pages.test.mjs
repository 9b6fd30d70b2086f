// The remaining pages answer and are screenshot for a reviewer: the merchant's balance and
// webhooks, the operator's review queue, gateway health (with the pipeline's wait) and
// dead-letter queue. A merchant
// user is refused every operator page. The dashboard's chart counts a payment made here.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deposit, screenshot, setup, signIn, visit, waitForStatus } from './harness.mjs';

const ctx = setup();
const OPERATOR_PAGES = ['/console/ops/unresolved', '/console/ops/review', '/console/ops/gateways', '/console/ops/dlq'];

/** `/console/ops/dlq` → `ops-dlq`. */
const shotName = (route) => route.replace(/^\/console\/?/, '').replace(/\//g, '-') || 'dashboard';

/** A succeeded payment, so the chart, the balance and the webhook log have data (made once). */
let made;
function payment() {
  made ??= (async () => {
    const txn = await deposit(ctx.dev, ctx.dev.apiKey, { customer: 'cust_pages' });
    return waitForStatus(ctx.dev, ctx.dev.apiKey, txn.id, 'succeeded');
  })();
  return made;
}

test("the merchant's pages, and no operator page for a merchant user", async () => {
  const { dev, browser } = ctx;
  await payment();
  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  for (const route of ['/console', '/console/balance', '/console/webhooks']) {
    assert.equal(await visit(page, dev, route), 200, route);
    assert.equal(new URL(page.url()).pathname, route, `${route} is not redirected`);
    assert.equal(await page.locator('[data-testid=whoami]').count(), 1, `${route} is a signed-in page`);
    await screenshot(page, `merchant-${shotName(route)}`);
  }
  // The demo endpoint's page (its attempt log), for the reviewer; the contract names no
  // selector for it, so it is only looked at, not tested.
  await visit(page, dev, '/console/webhooks');
  const endpoint = page.locator('a[href^="/console/webhooks/"]').first();
  if (await endpoint.count() === 1) {
    await visit(page, dev, await endpoint.getAttribute('href'));
    await screenshot(page, 'merchant-webhook-endpoint');
  }
  assert.equal(await visit(page, dev, '/console/api-keys'), 200);
  await screenshot(page, 'merchant-api-keys');
  for (const route of OPERATOR_PAGES) {
    const status = await visit(page, dev, route);
    assert.ok([403, 404].includes(status), `a merchant user at ${route}: ${status}`);
  }
  await context.close();
});

test("the dashboard's chart counts the payment that became final", async () => {
  const { dev, browser } = ctx;
  await payment();
  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  await visit(page, dev, '/console');
  assert.equal(await page.locator('svg[data-testid=chart]').count(), 1, 'the chart');
  // A bar's <title> says how many (e.g. "17:28 succeeded: 1"); the legend's bare word does not count.
  const titles = await page.locator('svg[data-testid=chart] title').allTextContents();
  const counted = titles
    .map((t) => t.match(/succeeded\D*(\d+)/)?.[1])
    .filter(Boolean)
    .reduce((sum, n) => sum + Number(n), 0);
  assert.ok(counted >= 1, `the chart shows the succeeded payment (bar titles: ${JSON.stringify(titles)})`);
  await context.close();
});

test("the operator's pages", async () => {
  const { dev, browser } = ctx;
  await payment();
  const { context, page } = await signIn(browser, dev, dev.operatorUser);
  for (const route of ['/console', ...OPERATOR_PAGES]) {
    assert.equal(await visit(page, dev, route), 200, route);
    assert.equal(new URL(page.url()).pathname, route, `${route} is not redirected`);
    assert.equal(await page.locator('[data-testid=whoami]').count(), 1, `${route} is a signed-in page`);
    await screenshot(page, `operator-${shotName(route)}`);
  }
  // Gateway health opens with the pipeline: how long a payment would queue in the workers,
  // which both processors of this `paygate dev` publish every 500 ms.
  await visit(page, dev, '/console/ops/gateways');
  const wait = await page.locator('[data-testid=pipeline-wait]').textContent();
  assert.match(wait ?? '', /^\d+\.\d s$/, `the pipeline's wait: ${wait}`);
  const pipeline = (await page.locator('[data-testid=pipeline]').textContent()) ?? '';
  for (const worker of ['payment-processor', 'callback-processor']) {
    assert.match(pipeline, new RegExp(`${worker}: \\d+\\.\\d s`), `the ${worker}'s wait is shown: ${pipeline}`);
  }
  await context.close();
});
