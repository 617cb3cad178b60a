-- `moonshift goto V`: applies or reverts until exactly version V is current.
local execute = require("moonshift.execute")
local plan = require("moonshift.plan")
local errors = require("moonshift.errors")
local report = require("moonshift.report")

local fmt = string.format

local go = { summary = "Apply or revert until exactly this version is current.",
  uses = { "connection", "lock", "timeouts", "log", "confirm" } }

function go.arguments(cmd)
  cmd:argument("version", "The version to reach (or head, or base: nothing applied).")
    :target("version_arg")
  cmd:flag("--allow-empty-down", "Revert a migration whose down script holds no statements.")
  cmd:flag("--backup-first", "pg_dump the database before anything changes.")
end

function go.options(args)
  return { version = args.version_arg, dry_run = args.dry_run, auto_confirm = args.auto_confirm,
    allow_empty_down = args.allow_empty_down,
    backup_first = args.backup_first }
end

--- Moves to exactly version opts.version: up if it is pending, down if newer ones are applied.
-- @return { done, current, target, reverted } | nil, err
function go.run(cfg, ui, opts)
  local to, direction
  local res, err = execute.change(cfg, ui, opts, {
    plan = function(s)
      local err
      to, err = execute.target(s, opts.version, true)
      if not to then return nil, err end
      local ok, rerr = plan.check_runnable(s.status, cfg)
      if not ok then return nil, rerr end
      local down, derr = plan.down(s.status, 0, to, opts.allow_empty_down)
      if not down then return nil, derr end
      local up = plan.up(s.status, to)
      if #down > 0 and #up > 0 then
        return nil, errors.new("refused", fmt("cannot go to %s: some migrations below it " ..
          "are pending and some above it applied", to.id))
      end
      local list = (#down > 0) and down or up
      direction = (#down > 0) and "down" or "up"
      return list, direction, fmt("%s %s on %s to reach %s?",
        direction == "up" and "Apply" or "Revert", report.plural(#list, "migration"), s.label,
        to.id)
    end,
    run = function(s, list, dir)
      return execute.run(s, list, dir, { to = to })
    end,
  })
  if res and not res.nothing and not res.dry_run then res.reverted = direction == "down" end
  return res, err
end

go.print = report.run

return go
