-- `moonshift restore [DUMP]`: replaces the database with a backup, exactly; the database
-- as it was is kept under another name.
local session = require("moonshift.session")
local backup = require("moonshift.backup")
local db = require("moonshift.db")
local errors = require("moonshift.errors")
local history = require("moonshift.history")
local paths = require("moonshift.paths")
local restore_mod = require("moonshift.restore")
local ui_mod = require("moonshift.ui")

local fmt = string.format

local restore = { summary = "Replace the database with a backup (default: its newest).",
  uses = { "connection", "lock" } }

function restore.arguments(cmd)
  cmd:argument("dump", "The backup file (default: the newest of this database)."):args("?")
  cmd:flag("--terminate", "End the other sessions on the database instead of refusing.")
  cmd:flag("-y --auto-confirm", "Do not ask.")
end

function restore.options(args)
  return { dump = args.dump, terminate = args.terminate, auto_confirm = args.auto_confirm }
end

-- Records the restore in the restored database's own events (its history is the dump's).
local function record(cfg, s, res)
  local conn = db.connect(cfg)
  if not conn then return end
  local h = history.new(conn, s.history.schema, cfg)
  local rows = conn:query(fmt("SELECT version FROM %s WHERE state = 'applied' AND kind = " ..
    "'versioned' ORDER BY applied_at DESC, version DESC LIMIT 1", h.migrations))
  res.current = rows and rows[1] and rows[1].version or nil
  local ok, err = h:event("restore", nil, s.run_id, { dump = res.dump, kept = res.kept })
  if not ok then
    s.ui:warn("the restore could not be recorded in " .. h.events .. ": " ..
      tostring(err and err.message or err))
  end
  conn:close()
end

--- Replaces the database with opts.dump (default: the newest backup of it).
-- @return { dump, kept, elapsed_ms, target } | nil, err
function restore.run(cfg, ui, opts)
  local pre, err = backup.preflight({ conninfo = cfg.database, dir = backup.dir_for(cfg),
    pg_dump = cfg.backup and cfg.backup.pg_dump })
  if not pre then return nil, err end
  return session.with(cfg, ui, {}, function(s)
    if s.pooled then
      return nil, errors.new("connect", fmt("%s is reached through a connection pooler: a " ..
        "restore replaces the database, which needs a direct connection; nothing was changed",
        s.label))
    end
    local dbname = s.conn:info().dbname
    local dump, derr = restore_mod.choose(backup.dir_for(cfg), dbname, opts.dump)
    if not dump then return nil, derr end
    local others = restore_mod.others(s.conn, { s.conn:backend_pid() })
    if #others > 0 and not opts.terminate then
      return nil, errors.new("refused", fmt("%s is in use by %s; nothing was changed. Stop " ..
        "them, or pass --terminate to end them", dbname, restore_mod.describe(others)))
    end
    local ok
    ok, err = s:confirm(opts, fmt("Replace %s with the backup %s? Everything since it was " ..
      "taken is undone; the database as it is now is kept as %s.", s.label,
      paths.display(dump), restore_mod.kept_name(dbname)))
    if not ok then return nil, err end
    ok, err = s:begin_change()
    if not ok then return nil, err end
    ok, err = s:open_log("restore")
    if not ok then return nil, err end
    local res, rerr = restore_mod.run({ conninfo = cfg.database, dbname = dbname, dump = dump,
      pg_restore = pre.tools.pg_restore, env = pre.env, terminate = opts.terminate,
      close_own = function() s:disconnect() end })
    if not res then
      s.ui:event("run_failed", { kind = rerr.kind, message = rerr.message, done = 0 })
      return nil, rerr
    end
    res.dump, res.target = paths.display(dump), s.label
    record(cfg, s, res)
    s.ui:event("run_done", { run_id = s.run_id, command = "restore", dump = dump,
      kept = res.kept, elapsed_ms = res.elapsed_ms })
    return res
  end)
end

function restore.print(ui, res)
  ui:result(fmt("restored %s from %s in %s; now at %s", res.target, res.dump,
    ui_mod.duration(res.elapsed_ms), res.current or "nothing applied"))
  ui:info(fmt("the database as it was is kept as %s; drop it when you no longer need it: " ..
    "DROP DATABASE \"%s\"", res.kept, res.kept))
  return 0
end

return restore
