-- Runs after a failed migration was rolled back. It has no database handle; a team would
-- post to its chat here with ctx.spawn({ "curl", ... }).
return function(ctx)
  local e = ctx.error
  ctx.log.warn(string.format("on_error: %s failed (%s%s)", e.migration, e.kind,
    e.sqlstate and (", SQLSTATE " .. e.sqlstate) or ""))
end
