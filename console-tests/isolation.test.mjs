// A merchant user sees only its own merchant's payments: the other merchant's payment is not
// listed (nor found by its id or customer in the search), its page is a 404 and redelivering
// its event is a 404, while its own is listed, found and shown. Then the filters and the
// keyset pages.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  api, createMerchant, deposit, patchKnobs, resetKnobs, screenshot, setup, signIn, submit, visit, waitFor, waitForStatus,
} from './harness.mjs';

/** Payments made to fill more than one page of the list (the console shows 50 a page). */
const PAGE_FILL = 55;

const ctx = setup();

/** The ids of the transaction rows on the page, in order. */
async function rowIds(page) {
  return page.locator('tr[data-testid=txn-row]').evaluateAll((rows) => rows.map((r) => r.dataset.id));
}

test("a merchant user sees its own payments and never another merchant's", async () => {
  const { dev, browser } = ctx;
  const other = await createMerchant(dev, 'other');
  const mine = await deposit(dev, dev.apiKey, { customer: 'cust_mine' });
  const theirs = await deposit(dev, other.apiKey, { customer: 'cust_theirs' });
  await waitForStatus(dev, dev.apiKey, mine.id, 'succeeded');
  await waitForStatus(dev, other.apiKey, theirs.id, 'succeeded');

  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  assert.equal(await visit(page, dev, '/console/transactions'), 200);
  const ids = await rowIds(page);
  assert.ok(ids.includes(mine.id), `own payment ${mine.id} listed: ${ids}`);
  assert.ok(!ids.includes(theirs.id), `the other merchant's ${theirs.id} is not listed: ${ids}`);
  const link = page.locator(`tr[data-testid=txn-row][data-id="${mine.id}"] a[href$="/console/transactions/${mine.id}"]`);
  assert.equal(await link.count(), 1, 'the row links to the payment');
  await screenshot(page, 'transactions');

  // The search box: an id goes to its payment (another merchant's is a 404, like an unknown
  // one); a customer reference lists that customer's payments, of this merchant only.
  const filters = page.locator('form#filters');
  for (const name of ['status', 'kind', 'gateway', 'from', 'to', 'q']) {
    assert.equal(await filters.locator(`[name=${name}]`).count(), 1, `filter ${name}`);
  }
  await filters.locator('[name=q]').fill(theirs.id);
  let res = await submit(page, filters);
  assert.equal(res.status(), 404, "searching for the other merchant's id");
  assert.equal(await page.locator('[data-testid=status]').count(), 0, 'nothing of it is shown');
  await visit(page, dev, '/console/transactions');
  await filters.locator('[name=q]').fill(mine.id);
  res = await submit(page, filters);
  assert.equal(res.status(), 200);
  assert.equal(new URL(page.url()).pathname, `/console/transactions/${mine.id}`, 'its own id opens the payment');
  await visit(page, dev, '/console/transactions');
  await filters.locator('[name=q]').fill('cust_mine');
  await submit(page, filters);
  assert.deepEqual(await rowIds(page), [mine.id], 'found by customer');
  await filters.locator('[name=q]').fill('cust_theirs');
  await submit(page, filters);
  assert.deepEqual(await rowIds(page), [], "the other merchant's customer finds nothing");

  assert.equal(await visit(page, dev, `/console/transactions/${mine.id}`), 200);
  assert.equal(await visit(page, dev, `/console/transactions/${theirs.id}`), 404, "another merchant's payment is a 404");
  await screenshot(page, 'transaction-of-another-merchant');

  // Nor can it act on the other merchant's payment: its own redeliver form, aimed at the
  // other payment's event, with a valid csrf token, is a 404 and delivers nothing.
  const theirEvents = await waitFor("the other merchant's webhook event", async () => {
    const res = await api(dev, other.apiKey, 'GET', `/v1/transactions/${theirs.id}/events`);
    return res.status === 200 && res.body.data.length > 0 ? res.body.data : undefined;
  });
  const myEvents = await waitFor('my webhook event', async () => {
    const res = await api(dev, dev.apiKey, 'GET', `/v1/transactions/${mine.id}/events`);
    return res.status === 200 && res.body.data.length > 0 ? res.body.data : undefined;
  });
  assert.equal(await visit(page, dev, `/console/transactions/${mine.id}`), 200);
  const form = page.locator('form[data-testid=redeliver]').first();
  const action = await form.evaluate((f) => f.action);
  assert.ok(action.includes(mine.id) && action.includes(myEvents[0].id), `redeliver names payment and event: ${action}`);
  const aimed = action.replace(mine.id, theirs.id).replace(myEvents[0].id, theirEvents[0].id);
  const token = await form.locator('input[name=csrf]').inputValue();
  const deliveriesBefore = (await api(dev, other.apiKey, 'GET', `/v1/transactions/${theirs.id}/deliveries`)).body.data.length;
  const refused = await page.request.post(aimed, { form: { csrf: token }, maxRedirects: 0 });
  assert.equal(refused.status(), 404, "redelivering another merchant's event");
  await new Promise((r) => setTimeout(r, 1_000));
  const deliveriesAfter = (await api(dev, other.apiKey, 'GET', `/v1/transactions/${theirs.id}/deliveries`)).body.data.length;
  assert.equal(deliveriesAfter, deliveriesBefore, 'nothing was delivered');
  // The control: the same request aimed at its own event is accepted.
  const own = await page.request.post(action, { form: { csrf: token }, maxRedirects: 0 });
  assert.ok(own.status() >= 200 && own.status() < 400, `redelivering its own event: ${own.status()}`);
  await context.close();
});

test('the status filter and the keyset pages', async () => {
  const { dev, browser } = ctx;
  // A declined deposit next to succeeded ones: every gateway of the route declines for a moment.
  const route = ['sandbox-json', 'sandbox-proto', 'sandbox-soap'];
  for (const account of route) await patchKnobs(dev, account, { decline_rate: 1.0 });
  const declined = await deposit(dev, dev.apiKey, { customer: 'cust_declined' });
  await waitForStatus(dev, dev.apiKey, declined.id, 'failed');
  for (const account of route) await resetKnobs(dev, account);
  const made = [];
  for (let i = 0; i < PAGE_FILL; i += 1) made.push(await deposit(dev, dev.apiKey, { customer: `cust_page_${i}` }));
  for (const t of made) await waitForStatus(dev, dev.apiKey, t.id, 'succeeded');

  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  await visit(page, dev, '/console/transactions');
  const filters = page.locator('form#filters');
  await filters.locator('[name=status]').selectOption('failed');
  await submit(page, filters);
  assert.deepEqual(await rowIds(page), [declined.id], 'only the declined one is failed');
  await screenshot(page, 'transactions-failed');
  await filters.locator('[name=status]').selectOption('succeeded');
  await submit(page, filters);
  assert.ok(!(await rowIds(page)).includes(declined.id), 'the declined one is not succeeded');

  // Walk every page by its next link: each id once, all of ours found, more than one page.
  await visit(page, dev, '/console/transactions');
  const seen = [];
  let pages = 0;
  for (; pages < 100; pages += 1) {
    seen.push(...await rowIds(page));
    const next = page.locator('a[data-testid=next-page]');
    if (await next.count() === 0) break;
    await Promise.all([page.waitForNavigation(), next.click()]);
  }
  assert.ok(pages >= 1, `${seen.length} payments fit on one page: no next-page link was shown`);
  assert.equal(new Set(seen).size, seen.length, `no id twice across pages: ${seen}`);
  for (const t of [declined, ...made]) assert.ok(seen.includes(t.id), `${t.id} on some page`);
  await context.close();
});
