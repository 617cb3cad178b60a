-- The command line: parses arguments, runs a command, prints its result, maps errors to exits.
local argparse = require("argparse")
local json = require("moonshift.json")
local host = require("moonshift.host")
local errors = require("moonshift.errors")
local config = require("moonshift.config")
local ui_mod = require("moonshift.ui")
local report_mod = require("moonshift.report")

local fmt = string.format

local cli = {}

-- The commands, in the order `moonshift --help` lists them; each is a module in
-- lua/moonshift/commands/ declaring its arguments (arguments, options) and its run and print.
local COMMANDS = { "status", "current", "up", "down", "goto", "redo", "stamp", "adopt", "accept",
  "force", "history", "new", "check", "verify", "do", "script", "backup", "backups", "restore",
  "drop", "reset", "demo" }

-- Other tools' words for moonshift's commands: a usage error on one of them says which
-- moonshift command to use.
local PEER_WORDS = {
  upgrade = "moonshift up", downgrade = "moonshift down", migrate = "moonshift up",
  create = "moonshift new NAME", rollback = "moonshift down", deploy = "moonshift up",
  revert = "moonshift down", baseline = "moonshift stamp V", repair = "moonshift accept",
  info = "moonshift status", validate = "moonshift check", apply = "moonshift up",
}

-- The options shared by commands, by group; a command lists the groups it uses (`uses`),
-- and its --help shows only those (the others are still accepted, hidden, so a script can
-- pass the same connection options to every command). `project` is every command's but
-- demo's (`no_config`).
local GROUPS = {
  { "project", function(cmd)
    cmd:option("-c --config", "The migrate.lua to use (default: found in . or a parent).")
    cmd:option("--env-file", "Read KEY=VALUE lines from this file too (after .env).")
    cmd:option("--migrations", "The migrations directory (default: migrations).")
    cmd:flag("-q --quiet", "Only errors and results.")
  end },
  { "connection", function(cmd)
    cmd:option("-d --database", "Connection URI or conninfo (overrides the environment).")
    cmd:option("--schema", "Schema of the tracking tables.")
    cmd:option("--table", "Name of the tracking table.")
    cmd:flag("--require-tls", "Refuse a connection that crosses a network unencrypted.")
  end },
  { "lock", function(cmd)
    cmd:option("--lock-wait", "How long to wait for another run's lock (e.g. 30s).")
  end },
  { "timeouts", function(cmd)
    cmd:option("--lock-timeout", "lock_timeout for each migration (e.g. 5s).")
    cmd:option("--statement-timeout", "statement_timeout for each migration.")
  end },
  { "log", function(cmd)
    cmd:option("--log-file", "Write the run log here (default: beside the backups).")
    cmd:option("--log-format", "Progress as text (default) or json (one event per line).")
      :choices({ "text", "json" })
  end },
}

-- Options that take a value, for moving options given before the command after it, and
-- for taking them out of a workflow's own arguments.
local VALUE_OPTIONS = {
  ["-c"] = "config", ["--config"] = "config", ["-d"] = "database", ["--database"] = "database",
  ["--schema"] = "schema", ["--table"] = "table", ["--lock-wait"] = "lock_wait",
  ["--lock-timeout"] = "lock_timeout", ["--statement-timeout"] = "statement_timeout",
  ["--migrations"] = "migrations", ["--log-format"] = "log_format", ["--log-file"] = "log_file",
  ["--env-file"] = "env_file",
}

local function command_module(name)
  return require("moonshift.commands." .. name)
end

-- Adds a group's options to cmd, hidden when the command does not use them.
local function add_group(cmd, add, shown)
  if shown then return add(cmd) end
  local proxy = setmetatable({}, { __index = function(_, k)
    return function(_, ...) return cmd[k](cmd, ...):hidden(true) end
  end })
  add(proxy)
end

local function build_parser()
  local p = argparse("moonshift", "PostgreSQL schema migrations you can script in Lua.")
    :epilog("Exit codes: 0 ok, 1 internal error, 2 usage, 3 pending (check), 4 cannot " ..
      "connect, 5 lock busy, 6 SQL failed (rolled back), 7 hook failed, 8 verification " ..
      "failed, 9 refused (dirty, drift, missing, out of order), 10 backup failed or run " ..
      "log not written, 130 interrupted, 141 stdout closed. See moonshift(1).")
  p:command_target("command")
  p:require_command(false)
  p:flag("--version", "Print versions and exit."):target("show_version")
  p:add_complete() -- --completion bash|zsh|fish: generated from this parser
  local commands = {}
  for _, name in ipairs(COMMANDS) do
    local mod = command_module(name)
    local cmd = p:command(table.concat({ name, table.unpack(mod.aliases or {}) }, " "),
      mod.summary)
    commands[name] = cmd
    for _, alias in ipairs(mod.aliases or {}) do commands[alias] = cmd end
    if mod.arguments then mod.arguments(cmd) end
    local uses = { project = not mod.no_config }
    for _, g in ipairs(mod.uses or {}) do uses[g] = true end
    if uses.confirm then
      cmd:flag("-y --auto-confirm", "Do not ask; required without a terminal.")
      cmd:flag("-n --dry-run", "Print the plan and the SQL; change nothing.")
    end
    for _, group in ipairs(GROUPS) do add_group(cmd, group[2], uses[group[1]]) end
    if mod.passes_arguments then cmd:handle_options(false) end
  end
  return p, commands
end

local function version_text()
  local pg = require("moonshift.pg")
  local hash = require("moonshift.hash")
  local v = pg.lib_version()
  return fmt("moonshift %s\n%s, libpq %d.%d, %s", host.version, host.lua_version,
    v // 10000, v % 10000, hash.openssl_version())
end

-- The last event of every run with --log-format json, whatever happened: its exit code,
-- and what it did or why it did not.
local function finished(ui, code, fields)
  if not ui.json then return end
  fields.exit_code = code
  ui:event("run_finished", fields)
end

local function report(ui, err)
  ui:error(tostring(err))
  if err.done and #err.done > 0 then
    ui:info(fmt("applied before the failure (still committed): %s",
      report_mod.plural(#err.done, "migration")))
  end
  local code = err.exit_code or errors.EXIT[err.kind] or 1
  finished(ui, code, { ok = false, kind = err.kind, message = err.message, file = err.file,
    line = err.line, sqlstate = err.sqlstate, applied = err.done and #err.done or 0 })
  return code
end

-- After a SIGINT or SIGTERM a failure is the signal's doing (its cancel ended whatever
-- statement ran): the exit code says interrupted, 130 or 143, and the message keeps what
-- else is known. A bug stays a bug.
local function after_signal(err)
  local sig, code = host.interrupted()
  if not sig or err.kind == "internal" then return err end
  if err.kind ~= "interrupted" then
    err.kind, err.message = "interrupted", fmt("interrupted (SIG%s): %s", sig, err.message)
  end
  err.exit_code = code
  return err
end

-- "moonshift -d URL up" means "moonshift up -d URL": the options live on the commands.
local function options_after_command(argv)
  local before, i = {}, 1
  while argv[i] and argv[i]:sub(1, 1) == "-" and argv[i] ~= "--" do
    local a = argv[i]
    if a == "-h" or a == "--help" or a == "--version" or a == "--completion" then return argv end
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

-- A workflow or script passes its arguments through: take our own options out of them.
local function take_our_options(args)
  local rest, list, i = {}, args.args or {}, 1
  while i <= #list do
    local a = list[i]
    local name, val = a:match("^(%-%-[%w-]+)=(.*)$")
    if name and VALUE_OPTIONS[name] then
      args[VALUE_OPTIONS[name]] = val
    elseif VALUE_OPTIONS[a] and list[i + 1] then
      args[VALUE_OPTIONS[a]] = list[i + 1]
      i = i + 1
    else
      rest[#rest + 1] = a
    end
    i = i + 1
  end
  args.args = rest
end

--- `moonshift help [COMMAND]`: a command's help, or every command and the options they
-- share. Returns the exit code.
function cli.help(parser, commands, name)
  if name and not commands[name] then
    io.stderr:write(fmt("moonshift: no command %q; `moonshift help` lists them\n", name))
    return errors.EXIT.usage
  end
  io.stdout:write((name and commands[name] or parser):get_help(), "\n")
  if not name then
    local shared = argparse("moonshift COMMAND", "The options commands share; each " ..
      "command's help (moonshift help COMMAND) lists those it takes.")
    for _, group in ipairs(GROUPS) do group[2](shared) end
    io.stdout:write("\n", shared:get_help(), "\n")
  end
  return 0
end

--- A moonshift command line for another tool's spelling (`upgrade`, `down -1`), or nil.
-- @param argv table: the arguments as given
-- @return string | nil
function cli.did_you_mean(argv)
  local word, second = argv[1], argv[2]
  if PEER_WORDS[word] then return PEER_WORDS[word] end
  if word == "down" and second and second:match("^%-%d+$") then
    return "moonshift down " .. second:sub(2)
  end
  if word == "force" and second == "-1" then
    return "moonshift force V --not-applied (the version whose row to remove)"
  end
  if word == "new" and second == "-seq" then
    return "moonshift new NAME (numbering is automatic)"
  end
  return nil
end

--- Runs the command line; returns the exit code.
-- @param argv table: the arguments (without the program name)
-- @return integer
function cli.main(argv)
  math.randomseed(os.time(), require("moonshift.proc").getpid())
  host.catch_signals()
  local parser, commands = build_parser()
  if argv[1] == "help" then return cli.help(parser, commands, argv[2]) end
  argv = options_after_command(argv)
  local ok, args = parser:pparse(argv)
  local json_events = ok and args.log_format == "json"
  local ui = ui_mod.new({ quiet = ok and (args.quiet or json_events), json = json_events })
  if not ok then
    ui:error(args)
    local word = argv[1]
    local hint = cli.did_you_mean(argv)
    if hint then ui:info("did you mean: " .. hint) end
    io.stderr:write((commands[word] or parser):get_usage(), "\n")
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
  local mod = command_module(args.command)
  if mod.passes_arguments then
    local first = args.name or args.file
    if first == "--help" or first == "-h" then return cli.help(parser, commands, args.command) end
    take_our_options(args)
  end
  local cfg, cerr = config.load({
    config = args.config, database = args.database, schema = args.schema, table = args.table,
    lock_wait = args.lock_wait, lock_timeout = args.lock_timeout,
    statement_timeout = args.statement_timeout, allow_out_of_order = args.out_of_order,
    migrations = args.migrations, log_format = args.log_format, log_file = args.log_file,
    require_tls = args.require_tls, env_file = args.env_file,
  })
  if not cfg then return report(ui, cerr) end
  for _, group in ipairs(mod.uses or {}) do
    if group == "connection" then
      local safe, derr = config.check_database(cfg)
      if not safe then return report(ui, derr) end
    end
  end
  local opts = mod.options and mod.options(args) or {}
  local res, err = mod.run(cfg, ui, opts)
  if res == nil then
    if not errors.is(err) then err = errors.wrap("internal", err or "unknown failure") end
    return report(ui, after_signal(err))
  end
  local code = mod.print and mod.print(ui, res, opts) or
    (math.type(res) == "integer" and res or 0)
  if type(res) == "table" then
    finished(ui, code, { ok = code == 0, applied = res.done and #res.done or 0,
      nothing = res.nothing or false, dry_run = res.dry_run or false,
      direction = res.reverted and "down" or "up", current = res.current_version or json.null })
  end
  if code == 0 and ui.out_failed then
    -- what the command did is done; its output was not all read (exit 141, as for SIGPIPE)
    ui:error(fmt("standard output was closed (%s); the command itself finished",
      ui.out_failed))
    return 141
  end
  return code
end

return cli
