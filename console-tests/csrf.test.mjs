// CSRF: every form carries its hidden token, and a form posted without it (or with another
// session's) is refused with 403 and changes nothing; the same post with the token goes through.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { consoleUrl, screenshot, setup, signIn, submitOf, visit } from './harness.mjs';

const ctx = setup();

/** The absolute URL a form posts to. */
async function actionOf(page, form) {
  const action = await form.evaluate((f) => f.action);
  assert.ok(action, 'the form has an action');
  return action;
}

async function keyRows(page, dev) {
  await visit(page, dev, '/console/api-keys');
  return page.locator('tr[data-testid=key-row]').count();
}

test('every form on the pages carries a csrf token', async () => {
  const { dev, browser } = ctx;
  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  for (const route of ['/console', '/console/transactions', '/console/api-keys', '/console/webhooks', '/console/balance']) {
    assert.equal(await visit(page, dev, route), 200, route);
    const missing = await page.locator('form').evaluateAll((forms) => forms
      .filter((f) => (f.method || 'get').toLowerCase() === 'post')
      .filter((f) => !f.querySelector('input[type=hidden][name=csrf]')?.value)
      .map((f) => f.id || f.dataset.testid || f.action));
    assert.deepEqual(missing, [], `POST forms without a csrf token on ${route}`);
  }
  await context.close();
});

test('a form posted without its csrf token gets 403 and changes nothing', async () => {
  const { dev, browser } = ctx;
  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  const before = await keyRows(page, dev);
  const form = page.locator('form#create-key');
  const action = await actionOf(page, form);
  const token = await form.locator('input[name=csrf]').inputValue();
  assert.ok(token.length >= 16, 'a token worth the name');

  // Over HTTP, with the session cookie but no token, then with a forged one.
  const bare = await page.request.post(action, { form: { scopes: 'read' }, maxRedirects: 0 });
  assert.equal(bare.status(), 403, 'no csrf token');
  const forged = await page.request.post(action, { form: { scopes: 'read', csrf: `${token.slice(0, -2)}xx` }, maxRedirects: 0 });
  assert.equal(forged.status(), 403, 'a forged csrf token');
  assert.equal(await keyRows(page, dev), before, 'no key was created');

  // In the browser: the hidden input removed, the form submitted by its button.
  await page.locator('form#create-key input[name=csrf]').evaluate((input) => input.remove());
  await page.locator('form#create-key input[name=scopes][value=read]').check();
  const [res] = await Promise.all([
    page.waitForNavigation(),
    submitOf(page.locator('form#create-key')).click(),
  ]);
  assert.equal(res.status(), 403, 'the browser form without its token');
  await screenshot(page, 'csrf-refused');
  assert.equal(await keyRows(page, dev), before, 'still no key');

  // The control: the same post with the page's token is accepted.
  const fresh = await page.locator('form#create-key input[name=csrf]').inputValue();
  const once = await page.locator('form#create-key input[name=form]').inputValue();
  const ok = await page.request.post(action, { form: { scopes: 'read', csrf: fresh, form: once }, maxRedirects: 0 });
  assert.ok(ok.status() < 400, `with its token the post goes through: ${ok.status()}`);
  assert.equal(await keyRows(page, dev), before + 1, 'and creates the key');
  await context.close();
});

test('the login form and the logout form refuse a post without csrf', async () => {
  const { dev, browser } = ctx;
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(consoleUrl(dev, '/console/login'));
  const action = await actionOf(page, page.locator('form#login'));
  const res = await page.request.post(action, {
    form: { email: dev.merchantUser.email, password: dev.merchantUser.password },
    maxRedirects: 0,
  });
  assert.equal(res.status(), 403, 'a login without csrf');
  await page.goto(consoleUrl(dev, '/console'));
  assert.equal(new URL(page.url()).pathname, '/console/login', 'and it signed nobody in');
  await context.close();

  const signed = await signIn(browser, dev, dev.merchantUser);
  const logout = await actionOf(signed.page, signed.page.locator('form#logout'));
  const out = await signed.page.request.post(logout, { form: {}, maxRedirects: 0 });
  assert.equal(out.status(), 403, 'a logout without csrf');
  assert.equal(await visit(signed.page, dev, '/console'), 200, 'still signed in');
  assert.equal(new URL(signed.page.url()).pathname, '/console');
  await signed.context.close();
});
