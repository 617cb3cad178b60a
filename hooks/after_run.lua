-- Runs once after the last migration: a timing summary, slowest first.
return function(ctx)
  local list = {}
  for _, r in ipairs(ctx.results or {}) do list[#list + 1] = r end
  table.sort(list, function(a, b) return a.duration_ms > b.duration_ms end)
  local total = 0
  for _, r in ipairs(list) do total = total + r.duration_ms end
  ctx.log.info(string.format("after_run: %d migration(s) in %.0f ms; slowest %s (%.0f ms)",
    #list, total, list[1] and list[1].id or "-", list[1] and list[1].duration_ms or 0))
end
