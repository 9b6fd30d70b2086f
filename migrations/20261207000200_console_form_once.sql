-- The console's "create API key" form carries a one-time id (issue 19's known gap: a browser
-- reload re-posted the form and made a second key). The key is inserted with it, and a second
-- post of the same form finds it taken and creates nothing: the console's Idempotency-Key.
-- NULL for keys made elsewhere (the CLI, `paygate dev`).
ALTER TABLE api_keys ADD COLUMN created_by_form UUID UNIQUE;
