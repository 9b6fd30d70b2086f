// Sign-in: a wrong password is refused on the login page with its error; the right one lands
// on the dashboard with the user named in the header; signing out ends the session.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { consoleUrl, screenshot, setup, signIn, submit, submitOf } from './harness.mjs';

const ctx = setup();

test('a wrong password shows the error and stays on the login page', async () => {
  const { dev, browser } = ctx;
  const page = await browser.newPage();
  const res = await page.goto(consoleUrl(dev, '/console/login'));
  assert.equal(res.status(), 200);
  await screenshot(page, 'login');
  const form = page.locator('form#login');
  assert.equal(await form.locator('input[name=csrf]').count(), 1, 'the login form carries its csrf token');
  await form.locator('[name=email]').fill(dev.merchantUser.email);
  await form.locator('[name=password]').fill(`${dev.merchantUser.password}-wrong`);
  await submitOf(form).click();
  const error = page.locator('[data-testid=error]');
  await error.waitFor({ state: 'visible', timeout: 15_000 });
  assert.notEqual((await error.textContent()).trim(), '', 'the error says something');
  assert.equal(new URL(page.url()).pathname, '/console/login');
  assert.equal(await page.locator('[data-testid=whoami]').count(), 0, 'not signed in');
  await screenshot(page, 'login-error');
  // Still not signed in: the dashboard sends the browser back to the login page.
  await page.goto(consoleUrl(dev, '/console'));
  assert.equal(new URL(page.url()).pathname, '/console/login');
  await page.context().close();
});

test('the right password lands on the dashboard, with the user and role in the header', async () => {
  const { dev, browser } = ctx;
  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  const whoami = await page.locator('[data-testid=whoami]').textContent();
  assert.ok(whoami.includes(dev.merchantUser.email), `whoami: ${whoami}`);
  assert.match(whoami, /merchant/i);
  assert.equal(await page.locator('svg[data-testid=chart]').count(), 1, 'the dashboard chart');
  await screenshot(page, 'dashboard');
  // Signing out: the next visit to the dashboard goes to the login page.
  await submit(page, page.locator('form#logout'));
  await page.goto(consoleUrl(dev, '/console'));
  assert.equal(new URL(page.url()).pathname, '/console/login');
  await context.close();
});

test('the operator signs in as an operator', async () => {
  const { dev, browser } = ctx;
  const { context, page } = await signIn(browser, dev, dev.operatorUser);
  const whoami = await page.locator('[data-testid=whoami]').textContent();
  assert.ok(whoami.includes(dev.operatorUser.email), `whoami: ${whoami}`);
  assert.match(whoami, /operator/i);
  await screenshot(page, 'dashboard-operator');
  await context.close();
});

/** `value` with one character in its middle third changed (a signature byte, not padding). */
function tampered(value) {
  const i = Math.floor(value.length * 0.6);
  const swap = value[i] === 'A' ? 'B' : 'A';
  return `${value.slice(0, i)}${swap}${value.slice(i + 1)}`;
}

test('the cookies are HttpOnly and SameSite=Strict; a forged session goes back to sign-in', async () => {
  const { dev, browser } = ctx;
  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  const cookies = await context.cookies();
  assert.ok(cookies.length >= 1, 'a session cookie');
  for (const c of cookies) {
    assert.equal(c.httpOnly, true, `${c.name} is HttpOnly`);
    assert.equal(c.sameSite, 'Strict', `${c.name} is SameSite=Strict`);
    assert.equal(c.path, '/console', `${c.name} is for the console only`);
  }
  // Every cookie's value altered by one character: nobody is signed in any more.
  await context.clearCookies();
  await context.addCookies(cookies.map((c) => ({ ...c, value: tampered(c.value) })));
  await page.goto(consoleUrl(dev, '/console/transactions'));
  assert.equal(new URL(page.url()).pathname, '/console/login', 'a forged session is sent to sign in');
  assert.equal(await page.locator('[data-testid=whoami]').count(), 0);
  // The control: the same cookies unaltered still sign the browser in.
  await context.clearCookies();
  await context.addCookies(cookies);
  await page.goto(consoleUrl(dev, '/console/transactions'));
  assert.equal(new URL(page.url()).pathname, '/console/transactions', 'the genuine session still works');
  await context.close();
});
