-- Adds users.email_normalized and backfills it in batches, inside the migration's transaction.
local verify = require("moonshift.verify")

local BATCH = 2 -- tiny on purpose, so the demo shows several batches

return {
  description = "lower-cased email, unique from 0009 on",
  pre = function(ctx)
    -- The unique index of 0009 would fail later on duplicates: refuse now, before any change.
    local dup = ctx.db:one([[
      SELECT lower(email) AS email, count(*) AS n FROM users
      GROUP BY lower(email) HAVING count(*) > 1 LIMIT 1]])
    if dup then
      ctx.fail(string.format("%d users share the email %s; merge them first", dup.n, dup.email))
    end
  end,
  post = function(ctx)
    local batches, rows = 0, 0
    repeat
      local done = ctx.db:query([[
        WITH batch AS (
          SELECT id FROM users WHERE email_normalized IS NULL ORDER BY id LIMIT $1)
        UPDATE users u SET email_normalized = lower(u.email)
        FROM batch WHERE u.id = batch.id
        RETURNING u.id]], BATCH)
      if #done > 0 then batches, rows = batches + 1, rows + #done end
    until #done == 0
    ctx.log.info(string.format("  backfilled %d users in %d batches", rows, batches))
  end,
  verify = function(ctx)
    verify.column(ctx, "users", "email_normalized", { type = "text" })
    verify.no_rows(ctx, "SELECT id FROM users WHERE email_normalized IS DISTINCT FROM lower(email)")
  end,
}
