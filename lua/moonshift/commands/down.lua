-- `moonshift down`: reverts applied migrations (the newest, N of them, down to --to, --all).
local execute = require("moonshift.execute")
local plan = require("moonshift.plan")
local report = require("moonshift.report")

local fmt = string.format

local down = { summary = "Revert applied migrations (default: the newest).",
  uses = { "connection", "lock", "timeouts", "log", "confirm" } }

function down.arguments(cmd)
  cmd:argument("count", "How many to revert (base: all of them)."):args("?")
    :convert(function(v) return v == "base" and v or math.tointeger(v) end)
  cmd:option("--to", "Revert down to (not including) this version.")
  cmd:flag("--all", "Revert everything.")
  cmd:flag("--allow-empty-down", "Revert a migration whose down script holds no statements.")
  cmd:flag("--backup-first", "pg_dump the database before anything changes.")
end

function down.options(args)
  local base = args.count == "base"
  return { count = not base and args.count or nil, to = args.to, all = args.all or base,
    dry_run = args.dry_run, auto_confirm = args.auto_confirm,
    allow_empty_down = args.allow_empty_down, backup_first = args.backup_first }
end

--- Reverts applied migrations: the last opts.count (default 1), all above opts.to, or all.
-- @return { done, current, target, reverted = true } | nil, err
function down.run(cfg, ui, opts)
  local res, err = execute.change(cfg, ui, opts, {
    plan = function(s)
      local ok, err = plan.check_runnable(s.status, { allow_out_of_order = true })
      if not ok then return nil, err end
      local to
      if opts.to then
        to, err = execute.target(s, opts.to, true)
        if not to then return nil, err end
      end
      local list, lerr = plan.down(s.status, opts.all and math.huge or (opts.count or 1), to,
        opts.allow_empty_down)
      if not list then return nil, lerr end
      return list, "down", fmt("Revert %s on %s (%s)?", report.plural(#list, "migration"),
        s.label, list[1] and list[1].id or "")
    end,
  })
  if res and not res.nothing and not res.dry_run then res.reverted = true end
  return res, err
end

down.print = report.run

return down
