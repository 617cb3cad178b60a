-- Runs once before the first migration of a run.
return function(ctx)
  ctx.log.info(string.format("before_run: %d migration(s) to run", #ctx.plan))
end
