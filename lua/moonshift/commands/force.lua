-- `moonshift force V`: marks one (dirty) migration as applied, or as not applied.
local session = require("moonshift.session")
local execute = require("moonshift.execute")

local fmt = string.format

local force = { summary = "Mark a (dirty) migration as applied, or not applied.",
  uses = { "connection", "lock" } }

function force.arguments(cmd)
  cmd:argument("version", "The migration (version, id, or head)."):target("version_arg")
  cmd:flag("--not-applied", "Remove its row so it runs again.")
  cmd:flag("-y --auto-confirm", "Do not ask.")
end

function force.options(args)
  return { version = args.version_arg, not_applied = args.not_applied,
    auto_confirm = args.auto_confirm }
end

--- Resolves one migration by hand: marks it applied (clears dirty), or with
-- opts.not_applied removes its row so it runs again.
-- @return { forced, applied, target } | nil, err
function force.run(cfg, ui, opts)
  return session.with(cfg, ui, { change = true }, function(s)
    local m, err = execute.target(s, opts.version)
    if not m then return nil, err end
    local ok
    ok, err = s:confirm(opts, fmt("Mark %s as %s on %s without running anything?", m.id,
      opts.not_applied and "not applied" or "applied", s.label))
    if not ok then return nil, err end
    local h = s.history
    ok, err = s:bookkeeping("force", function(must)
      if opts.not_applied then
        must(h:remove(m.version))
      else
        must(h:record(m, "applied", nil, s.run_id))
      end
      must(h:event("force", m, s.run_id, { applied = not opts.not_applied }))
      must(h:sync_compat_state(s.set))
    end, { m })
    if not ok then return nil, err end
    return { forced = m.id, applied = not opts.not_applied, target = s.label }
  end)
end

function force.print(ui, res)
  ui:result(fmt("%s marked %s on %s", res.forced, res.applied and "applied" or "not applied",
    res.target))
  return 0
end

return force
