-- The command line: parses arguments, runs a command, prints its result, maps errors to exits.
local argparse = require("argparse")
local json = require("moonshift.json")
local host = require("moonshift.host")
local errors = require("moonshift.errors")
local config = require("moonshift.config")
local ui_mod = require("moonshift.ui")

local fmt = string.format

local cli = {}

local function build_parser()
  local p = argparse("moonshift", "PostgreSQL schema migrations you can script in Lua.")
    :epilog("Exit codes: 0 ok, 1 internal error, 2 usage, 3 pending (check), 4 cannot " ..
      "connect, 5 lock busy, 6 SQL failed (rolled back), 7 hook failed, 8 verification " ..
      "failed, 9 refused (dirty, drift, missing, out of order), 10 backup failed, " ..
      "130 interrupted. See moonshift(1).")
  p:command_target("command")
  p:require_command(false)
  p:flag("--version", "Print versions and exit."):target("show_version")
  -- Connection and lock options work before or after the command name.
  local function common(cmd)
    cmd:option("-c --config", "The migrate.lua to use (default: found in . or a parent).")
    cmd:option("--migrations", "The migrations directory (default: migrations).")
    cmd:option("--log-file", "Write the run log here (default: beside the backups).")
    cmd:option("--log-format", "Progress as text (default) or json (one event per line)")
      :choices({ "text", "json" })
    cmd:option("-d --database", "Connection URI or conninfo (overrides the environment).")
    cmd:option("--schema", "Schema of the tracking tables.")
    cmd:option("--table", "Name of the tracking table.")
    cmd:option("--lock-wait", "How long to wait for another run's lock (e.g. 30s).")
    cmd:option("--lock-timeout", "lock_timeout for each migration (e.g. 5s).")
    cmd:option("--statement-timeout", "statement_timeout for each migration.")
    cmd:flag("--require-tls", "Refuse a connection that crosses a network unencrypted.")
    cmd:flag("-q --quiet", "Only errors and results.")
    return cmd
  end
  local command = p.command
  p.command = function(self, ...) return common(command(self, ...)) end

  local function mutating(cmd)
    cmd:flag("-y --auto-confirm", "Do not ask; required without a terminal.")
    cmd:flag("-n --dry-run", "Print the plan and the SQL; change nothing.")
    return cmd
  end

  p:command("status", "Show applied, pending, dirty and changed migrations."):flag("--json")
  local up = mutating(p:command("up", "Apply pending migrations."))
  up:option("--to", "Stop after this version.")
  up:option("--count", "Apply at most this many."):convert(math.tointeger)
  up:flag("--out-of-order --allow-out-of-order",
    "Apply pending migrations older than the newest applied one.")
  up:flag("--single-transaction", "Run the whole plan in one transaction.")
  up:flag("--backup-first", "pg_dump the database before anything changes.")
  local down = mutating(p:command("down", "Revert applied migrations (default: the newest)."))
  down:argument("count", "How many to revert."):args("?"):convert(math.tointeger)
  down:option("--to", "Revert down to (not including) this version.")
  down:flag("--all", "Revert everything.")
  local go = mutating(p:command("goto", "Apply or revert until exactly this version is current."))
  go:argument("version"):target("version_arg")
  mutating(p:command("redo", "Revert the newest migration and apply it again."))
  local stamp = p:command("stamp", "Record versions up to V as applied without running them.")
  stamp:argument("version"):target("version_arg")
  stamp:flag("-y --auto-confirm", "Do not ask.")
  local force = p:command("force", "Mark a (dirty) migration as applied, or not applied.")
  force:argument("version"):target("version_arg")
  force:flag("--not-applied", "Remove its row so it runs again.")
  force:flag("-y --auto-confirm", "Do not ask.")
  local hist = p:command("history", "Show the event log (applies, reverts, failures).")
  hist:flag("--json")
  hist:option("--limit", "Newest N events."):convert(math.tointeger):default("100")
  local new = p:command("new", "Create the files for a new migration.")
  new:argument("name")
  new:flag("--timestamp", "Number by UTC timestamp (when there are no migrations yet).")
  p:command("check", "Exit 0 if up to date, 3 if migrations are pending, 9 if refused.")
    :flag("--json")
  local verify = p:command("verify", "Re-run the verifications of applied migrations " ..
    "(read-only); exit 8 if any fails.")
  verify:argument("versions", "Only these versions."):args("*")
  verify:flag("--json")
  local wf = p:command("do", "Run a workflow from migrate.lua: moonshift do NAME [ARGS...].")
  wf:argument("name")
  wf:argument("args", "Passed to the workflow (-y sets args.yes)."):args("*")
  wf:handle_options(false)
  local script = p:command("script", "Run a Lua file with the moonshift API (ms, args).")
  script:argument("file")
  script:argument("args", "Passed to the script as args."):args("*")
  script:handle_options(false)
  p:command("backup", "pg_dump the database now (custom format, checked with pg_restore --list).")
  p:command("backups", "List the backups: source version, size, age."):flag("--json")
  p:command("demo", "Run the sample project on a throwaway database.")
  return p
end

local function version_text()
  local pg = require("moonshift.pg")
  local hash = require("moonshift.hash")
  local v = pg.lib_version()
  return fmt("moonshift %s\n%s, libpq %d.%d, %s", host.version, host.lua_version,
    v // 10000, v % 10000, hash.openssl_version())
end

local function print_status(ui, st)
  local lines = { fmt("%s: %s", st.target, st.current and ("at " .. st.current_id) or
    "nothing applied") }
  local function add(...) lines[#lines + 1] = fmt(...) end
  for _, m in ipairs(st.applied) do add("  applied  %-40s %s", m.id, m.applied_at or "") end
  for _, m in ipairs(st.dirty) do
    add("  DIRTY    %-40s started %s, run %s", m.id, m.started_at, tostring(m.run_id))
  end
  for _, m in ipairs(st.drift) do add("  CHANGED  %-40s file differs from what ran", m.id) end
  for _, m in ipairs(st.missing) do add("  MISSING  %-40s applied, no file", m.id) end
  for _, m in ipairs(st.pending) do add("  pending  %s", m.id) end
  for _, m in ipairs(st.repeatables) do add("  pending  %s (repeatable)", m.id) end
  add("%d applied, %d pending%s", #st.applied, #st.pending,
    (#st.dirty + #st.drift + #st.missing > 0) and
      fmt(", %d dirty, %d changed, %d missing", #st.dirty, #st.drift, #st.missing) or "")
  ui:result(table.concat(lines, "\n")) -- one write: 10,000 flushed lines cost ~40 ms
end

local function plural(n, word)
  return fmt("%d %s%s", n, word, n == 1 and "" or "s")
end

local function print_run(ui, res)
  if res.dry_run then
    ui:info(fmt("dry run: %s planned, nothing changed", plural(res.planned, "migration")))
  elseif res.nothing then
    ui:result(fmt("nothing to do: %s is at %s", res.target, res.current))
  elseif res.redo then
    ui:result(fmt("redid %s on %s", res.redo, res.target))
  else
    ui:result(fmt("%s %s on %s in %s; now at %s", res.reverted and "reverted" or "applied",
      plural(#res.done, "migration"), res.target, ui_mod.duration(res.duration_ms), res.current))
  end
end

local to_json = json.encode

local function with_printer(res, err)
  if not res then return nil, err end
  return res, nil, print_run
end

local function run_command(args, cfg, ui)
  local commands = require("moonshift.commands")
  local c = args.command
  if c == "status" or c == "check" then
    local st, err = commands[c](cfg, ui, { brief = not args.json })
    if not st then return nil, err end
    if args.json then ui:result(to_json(st)) else print_status(ui, st) end
    if c == "check" then
      return errors.EXIT[st.verdict] or 0
    end
    return 0
  elseif c == "up" then
    return with_printer(commands.up(cfg, ui, { to = args.to, count = args.count,
      dry_run = args.dry_run, auto_confirm = args.auto_confirm,
      single_transaction = args.single_transaction, backup_first = args.backup_first }))
  elseif c == "down" then
    return with_printer(commands.down(cfg, ui, { count = args.count, to = args.to,
      all = args.all, dry_run = args.dry_run, auto_confirm = args.auto_confirm }))
  elseif c == "goto" then
    return with_printer(commands.goto_version(cfg, ui, { version = args.version_arg,
      dry_run = args.dry_run, auto_confirm = args.auto_confirm }))
  elseif c == "redo" then
    return with_printer(commands.redo(cfg, ui, { dry_run = args.dry_run,
      auto_confirm = args.auto_confirm }))
  elseif c == "stamp" then
    local res, err = commands.stamp(cfg, ui, { version = args.version_arg,
      auto_confirm = args.auto_confirm })
    if not res then return nil, err end
    ui:result(fmt("stamped %s at %s (%s changed)", res.target, res.stamped,
      plural(#res.changed, "row")))
    return 0
  elseif c == "force" then
    local res, err = commands.force(cfg, ui, { version = args.version_arg,
      not_applied = args.not_applied, auto_confirm = args.auto_confirm })
    if not res then return nil, err end
    ui:result(fmt("%s marked %s on %s", res.forced, res.applied and "applied" or "not applied",
      res.target))
    return 0
  elseif c == "history" then
    local res, err = commands.history(cfg, ui, { limit = args.limit })
    if not res then return nil, err end
    if args.json then
      ui:result(to_json(res.events))
    else
      for _, e in ipairs(res.events) do
        ui:result(fmt("%s  %-8s %-40s %s@%s", e.at, e.action, e.name or "", e.applied_by,
          e.hostname or "?"))
      end
    end
    return 0
  elseif c == "new" then
    local res, err = commands.new(cfg, ui, { name = args.name, timestamp = args.timestamp })
    if not res then return nil, err end
    for _, f in ipairs(res.files) do ui:result(f) end
    return 0
  elseif c == "backup" then
    local res, err = commands.backup(cfg, ui)
    if not res then return nil, err end
    ui:result(res.path)
    ui:info("restore with: " .. res.restore_command)
    return 0
  elseif c == "backups" then
    local res = commands.backups(cfg)
    if args.json then
      ui:result(to_json(res.backups))
    else
      for _, b in ipairs(res.backups) do
        ui:result(fmt("%-60s v%-8s %10d bytes  %s ago", b.name, b.version, b.size,
          ui_mod.duration(b.age_s * 1000)))
      end
      if #res.backups == 0 then ui:result("no backups in " .. res.dir) end
    end
    return 0
  elseif c == "verify" then
    local res, err = commands.verify(cfg, ui, { versions = args.versions })
    if not res then return nil, err end
    if args.json then
      ui:result(to_json(res))
    else
      for _, r in ipairs(res.results) do
        ui:result(r.ok and fmt("ok    %s", r.id) or fmt("FAIL  %s\n      %s", r.id,
          tostring(r.message):gsub("\n", "\n      ")))
      end
      ui:result(fmt("%d verified, %d failed", #res.results - res.failed, res.failed))
    end
    return res.failed > 0 and errors.EXIT.verify or 0
  elseif c == "do" or c == "script" then
    local wargs = { yes = false }
    for _, a in ipairs(args.args or {}) do
      if a == "-y" or a == "--auto-confirm" then wargs.yes = true else wargs[#wargs + 1] = a end
    end
    local res, err
    if c == "do" then
      res, err = commands.workflow(cfg, ui, { name = args.name, args = wargs })
    else
      res, err = commands.script(cfg, ui, { file = args.file, args = wargs })
    end
    if not res then return nil, err end
    if type(res) == "table" then ui:result(to_json(res)) end
    return 0
  elseif c == "demo" then
    return require("moonshift.demo").run(ui)
  end
  return nil, errors.new("usage", "unknown command " .. tostring(c))
end

local function report(ui, err)
  if ui.json then
    io.stdout:write(json.encode({ event = "error", kind = err.kind, message = err.message,
      file = err.file, line = err.line, sqlstate = err.sqlstate }), "\n")
  end
  ui:error(tostring(err))
  if err.done and #err.done > 0 then
    ui:info(fmt("applied before the failure (still committed): %s", plural(#err.done, "migration")))
  end
  return err.exit_code or errors.EXIT[err.kind] or 1
end

-- Options that take a value, for moving options given before the command after it.
local VALUE_OPTIONS = {
  ["-c"] = true, ["--config"] = true, ["-d"] = true, ["--database"] = true,
  ["--schema"] = true, ["--table"] = true, ["--lock-wait"] = true, ["--lock-timeout"] = true,
  ["--statement-timeout"] = true, ["--migrations"] = true, ["--log-format"] = true,
  ["--log-file"] = true,
}

-- "moonshift -d URL up" means "moonshift up -d URL": the options live on the commands.
local function options_after_command(argv)
  local before, i = {}, 1
  while argv[i] and argv[i]:sub(1, 1) == "-" and argv[i] ~= "--" do
    local a = argv[i]
    if a == "-h" or a == "--help" or a == "--version" then return argv end
    before[#before + 1] = a
    if VALUE_OPTIONS[a] and argv[i + 1] then
      before[#before + 1] = argv[i + 1]
      i = i + 1
    end
    i = i + 1
  end
  if #before == 0 or not argv[i] then return argv end
  local out = { argv[i] }
  for _, a in ipairs(before) do out[#out + 1] = a end
  for k = i + 1, #argv do out[#out + 1] = argv[k] end
  return out
end

--- Runs the command line; returns the exit code.
-- @param argv table: the arguments (without the program name)
-- @return integer
function cli.main(argv)
  math.randomseed(os.time(), require("moonshift.proc").getpid())
  host.catch_signals()
  local parser = build_parser()
  local ok, args = parser:pparse(options_after_command(argv))
  local json_events = ok and args.log_format == "json"
  local ui = ui_mod.new({ quiet = ok and (args.quiet or json_events), json = json_events })
  if not ok then
    ui:error(args)
    io.stderr:write(parser:get_usage(), "\n")
    return errors.EXIT.usage
  end
  if args.show_version then
    ui:result(version_text())
    return 0
  end
  if not args.command then
    io.stdout:write(parser:get_help(), "\n")
    return 0
  end
  if args.command == "do" or args.command == "script" then
    -- these pass their arguments through; take our own options out of them
    local rest, list, i = {}, args.args or {}, 1
    while i <= #list do
      local a = list[i]
      local name, val = a:match("^(%-%-[%w-]+)=(.*)$")
      if name and VALUE_OPTIONS[name] then
        args[name:sub(3):gsub("-", "_")] = val
      elseif VALUE_OPTIONS[a] and list[i + 1] then
        local long = ({ ["-c"] = "--config", ["-d"] = "--database" })[a] or a
        args[long:sub(3):gsub("-", "_")] = list[i + 1]
        i = i + 1
      else
        rest[#rest + 1] = a
      end
      i = i + 1
    end
    args.args = rest
  end
  local cfg, cerr = config.load({
    config = args.config, database = args.database, schema = args.schema, table = args.table,
    lock_wait = args.lock_wait, lock_timeout = args.lock_timeout,
    statement_timeout = args.statement_timeout, allow_out_of_order = args.out_of_order,
    migrations = args.migrations, log_format = args.log_format, log_file = args.log_file,
    require_tls = args.require_tls,
  })
  if not cfg then return report(ui, cerr) end
  local res, err, printer = run_command(args, cfg, ui)
  if res == nil then
    if not errors.is(err) then err = errors.wrap("internal", err or "unknown failure") end
    return report(ui, err)
  end
  if printer then
    if not ui.json then printer(ui, res) end
    return 0
  end
  return res
end

return cli
