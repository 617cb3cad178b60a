-- Runs inside each migration's transaction, after its SQL and verification.
return function(ctx)
  local m = ctx.migration
  ctx.log.info(string.format("  after_each: %s %s (sha256 %s)", m.direction, m.id,
    m.checksum:sub(1, 12)))
end
