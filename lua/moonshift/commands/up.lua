-- `moonshift up`: applies pending migrations (up to --to, at most --count).
local execute = require("moonshift.execute")
local plan = require("moonshift.plan")
local report = require("moonshift.report")

local fmt = string.format

local up = { summary = "Apply pending migrations.",
  uses = { "connection", "lock", "timeouts", "log", "confirm" } }

function up.arguments(cmd)
  cmd:option("--to", "Stop after this version.")
  cmd:option("--count", "Apply at most this many."):convert(math.tointeger)
  cmd:flag("--out-of-order --allow-out-of-order",
    "Apply pending migrations older than the newest applied one.")
  cmd:flag("--single-transaction", "Run the whole plan in one transaction.")
  cmd:flag("--backup-first", "pg_dump the database before anything changes.")
end

function up.options(args)
  return { to = args.to, count = args.count, dry_run = args.dry_run,
    auto_confirm = args.auto_confirm, single_transaction = args.single_transaction,
    backup_first = args.backup_first }
end

--- Applies pending migrations (up to opts.to, at most opts.count).
-- @return { done = {...}, current, target } | nil, err
function up.run(cfg, ui, opts)
  local to
  return execute.change(cfg, ui, { dry_run = opts.dry_run, auto_confirm = opts.auto_confirm,
    single_transaction = opts.single_transaction or cfg.single_transaction,
    backup_first = opts.backup_first,
    to = opts.to }, {
    plan = function(s)
      local ok, err = plan.check_runnable(s.status, cfg)
      if not ok then return nil, err end
      if opts.to then
        to, err = execute.target(s, opts.to, true)
        if not to then return nil, err end
      end
      local list = plan.up(s.status, to)
      while opts.count and #list > opts.count do table.remove(list) end
      return list, "up", fmt("Apply %s to %s?", report.plural(#list, "migration"), s.label),
        s.status.repeatables[1] ~= nil and not to
    end,
  })
end

up.print = report.run

return up
