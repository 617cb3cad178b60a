-- `moonshift adopt`: records what another tool's history says is applied, without running it.
local session = require("moonshift.session")
local peers = require("moonshift.peers")
local errors = require("moonshift.errors")
local report = require("moonshift.report")
local paths = require("moonshift.paths")

local fmt = string.format

local adopt = { summary = "Record another tool's applied migrations as applied (switch tools).",
  uses = { "connection", "lock", "confirm" } }

function adopt.arguments(cmd)
  cmd:option("--from", "The tool whose history to adopt: " ..
    table.concat(peers.names(), ", ") .. ".")
  cmd:option("--from-table", "Its history table, [schema.]table, when not where the tool " ..
    "keeps it by default or its configuration file says."):target("from_table")
  cmd:flag("--allow-missing", "Adopt even when applied entries have no file, or files " ..
    "older than the newest applied one have no entry (they stay pending).")
    :target("allow_missing")
end

function adopt.options(args)
  return { from = args.from, from_table = args.from_table, allow_missing = args.allow_missing,
    auto_confirm = args.auto_confirm, dry_run = args.dry_run }
end

local function names(list, f, limit)
  local out = {}
  for i, x in ipairs(list) do
    if limit and i > limit then
      out[#out + 1] = fmt("and %d more", #list - limit)
      break
    end
    out[#out + 1] = f(x)
  end
  return table.concat(out, ", ")
end

local function entry_name(e)
  return e.name and e.version and e.name ~= e.version and fmt("%s (%s)", e.version, e.name) or
    tostring(e.name or e.version)
end

-- The one table to adopt: --from's, or the only one found.
local function choose(s, opts)
  if opts.from and not peers.get(opts.from) then
    return nil, errors.new("usage", fmt("--from %s: not a tool moonshift knows (one of: %s)",
      opts.from, table.concat(peers.names(), ", ")))
  end
  local found, err = peers.detect(s.conn, s.cfg, { from = opts.from,
    from_table = opts.from_table, all = true })
  if not found then return nil, err end
  if #found == 0 then
    return nil, errors.new("refused", fmt("no history of %s found in %s%s; nothing was changed",
      opts.from or "another migration tool", s.label, opts.from_table and
      (" at " .. opts.from_table) or " (give its table with --from-table [schema.]table)"))
  end
  if #found > 1 then
    return nil, errors.new("refused", fmt("several tools' history tables are here: %s; say " ..
      "which to adopt with --from TOOL; nothing was changed",
      names(found, function(f) return fmt("%s (%s)", f.label, peers.summary(f)) end)))
  end
  return found[1]
end

--- Reads another tool's history, matches each applied entry to a file and records those
-- as applied in one transaction, with an `adopt` event naming the source.
-- @return { tool, table, recorded = { ids }, dry_run, target } | nil, err
function adopt.run(cfg, ui, opts)
  return session.with(cfg, ui, { change = true, adopt = true }, function(s)
    local own = 0
    for _ in pairs(s.status.rows) do own = own + 1 end
    if own > 0 then
      return nil, errors.new("refused", fmt("moonshift's history (%s) already records %s; " ..
        "adopt is for a database moonshift has not tracked yet (see `moonshift stamp` and " ..
        "`moonshift force`); nothing was changed", s.history.migrations,
        report.plural(own, "migration")))
    end
    local found, err = choose(s, opts)
    if not found then return nil, err end
    local t = found.tool
    local res
    res, err = peers.match(found, s.set, s.conn)
    if not res then return nil, errors.wrap("usage", err, "cannot read a migration") end
    if #res.failed > 0 then
      local e = res.failed[1]
      return nil, errors.new("refused", fmt("%s: %s; nothing was changed", found.label,
        t.recovery and t.recovery(e) or (entry_name(e) .. " failed")))
    end
    if #res.drift > 0 then
      return nil, errors.new("refused", fmt("%s ran a different text than the file on disk " ..
        "now holds (drift): %s. Restore the files as they ran, or adopt from the tool after " ..
        "it has accepted them; nothing was changed", found.label, names(res.drift,
        function(d) return fmt("%s (recorded %s, file %s)", paths.display(d.m.up_path),
          d.expected, d.actual) end, 10)))
    end
    local problems = {}
    if #res.no_file > 0 then
      problems[#problems + 1] = fmt("%s applied with no file here: %s", #res.no_file == 1 and
        "1 entry" or (#res.no_file .. " entries"), names(res.no_file, entry_name, 10))
    end
    if #res.no_entry > 0 then
      problems[#problems + 1] = fmt("%s older than the newest applied one with no entry " ..
        "(never applied by %s?): %s", report.plural(#res.no_entry, "file"), t.name,
        names(res.no_entry, function(m) return m.id end, 10))
    end
    if #problems > 0 and not opts.allow_missing then
      return nil, errors.new("refused", fmt("%s does not match the migrations in %s: %s. " ..
        "Pass --allow-missing to adopt the rest (files with no entry stay pending); nothing " ..
        "was changed", found.label, paths.display(s.set.dir or cfg.migrations),
        table.concat(problems, "; ")))
    end
    for _, p in ipairs(problems) do ui:warn(p) end
    local lines = { fmt("Adopt %s on %s: record as applied without running:", found.label,
      s.label) }
    for _, r in ipairs(res.record) do lines[#lines + 1] = "  record  " .. r.m.id end
    if #res.record == 0 then lines[#lines + 1] = "  (nothing)" end
    local recorded = {}
    for i, r in ipairs(res.record) do recorded[i] = r.m.id end
    local out = { tool = t.name, table = found.qualified, recorded = recorded,
      target = s.label, dry_run = opts.dry_run, plan = lines }
    if opts.dry_run then return out end
    lines[#lines + 1] = "Continue?"
    local ok
    ok, err = s:confirm(opts, table.concat(lines, "\n"))
    if not ok then return nil, err end
    local h, list = s.history, {}
    for i, r in ipairs(res.record) do list[i] = r.m end
    ok, err = s:bookkeeping("adopt", function(must)
      for _, r in ipairs(res.record) do
        must(h:record(r.m, "applied", nil, s.run_id))
        must(h:event("adopt", r.m, s.run_id, { from = t.name, table = found.qualified,
          entry = r.entry.name or r.entry.version, implied = r.implied or nil }))
      end
      -- the adopted tool's own table already says this (and may hold entries with no file)
      if cfg.compat ~= t.name then must(h:sync_compat_state(s.set)) end
    end, list)
    if not ok then return nil, err end
    return out
  end)
end

function adopt.print(ui, res)
  if res.dry_run then
    for _, l in ipairs(res.plan) do ui:result(l) end
    ui:result("(dry run: nothing was changed)")
    return 0
  end
  ui:result(fmt("adopted %s from %s's %s on %s", report.plural(#res.recorded, "migration"),
    res.tool, res.table, res.target))
  return 0
end

return adopt
