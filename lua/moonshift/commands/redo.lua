-- `moonshift redo`: reverts the newest applied migration and applies it again.
local execute = require("moonshift.execute")
local plan = require("moonshift.plan")
local errors = require("moonshift.errors")
local report = require("moonshift.report")

local fmt = string.format

local redo = { summary = "Revert the newest migration and apply it again.",
  uses = { "connection", "lock", "timeouts", "log", "confirm" } }

function redo.arguments(cmd)
  cmd:flag("--allow-empty-down", "Revert a migration whose down script holds no statements.")
  cmd:flag("--backup-first", "pg_dump the database before anything changes.")
end

function redo.options(args)
  return { dry_run = args.dry_run, auto_confirm = args.auto_confirm,
    allow_empty_down = args.allow_empty_down,
    backup_first = args.backup_first }
end

--- Reverts the newest applied migration and applies it again.
-- @return { done, current, target, redo = id } | nil, err
function redo.run(cfg, ui, opts)
  return execute.change(cfg, ui, opts, {
    plan = function(s)
      local ok, err = plan.check_runnable(s.status, cfg)
      if not ok then return nil, err end
      local list, derr = plan.down(s.status, 1, nil, opts.allow_empty_down)
      if not list then return nil, derr end
      if #list == 0 then
        return nil, errors.new("refused", "nothing is applied, so nothing to redo")
      end
      return list, "down", fmt("Revert and re-apply %s on %s?", list[1].id, s.label)
    end,
    dry_run = function(s, list)
      execute.print_dry_run(s, list, "down")
      return execute.print_dry_run(s, list, "up")
    end,
    run = function(s, list)
      local res, err = execute.run(s, list, "down", {})
      if not res then return nil, err end
      local again, uerr = execute.run(s, list, "up", { to = list[1] })
      if not again then return nil, uerr end
      return { done = again.done, redo = list[1].id }
    end,
  })
end

redo.print = report.run

return redo
